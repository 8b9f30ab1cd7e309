"""Bad configuration fails at start, with a message naming the setting, where
it came from, the value and the fix -- through every source (environment,
configure(), [tool.jobtable], command-line flags), in the real ``jobtable``
command and worker; plus property tests of settings parsing."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import create_engine, text

import jobtable
from jobtable import settings
from jobtable.cli import main
from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, migrate, result_rows, tables
from jobtable.exceptions import ConfigurationError, SchemaNotMigrated, SchemaTooNew
from jobtable.setting_rules import Source
from jobtable.settings import Settings
from jobtable.worker.config import WorkerConfig
from tests.conftest import PG_ADMIN_URL, ROOT
from tests.worker_jobs import Log, lines, results, start_worker, worker_env

PROPERTY = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No JOBTABLE_* variables, no configure(), a directory without pyproject.toml."""
    for name in list(os.environ):
        if name.startswith("JOBTABLE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings.reset()
    yield tmp_path
    settings.reset()


# -- every bad value, through every source ---------------------------------------------------

#: (setting, value as an environment string, the same value in code/TOML, what the error says)
BAD: list[tuple[str, str, Any, str]] = [
    ("results_retention", "-1", -1, "at least 1 .0 or less would delete every result"),
    ("results_retention", "0", 0, "at least 1"),
    ("results_retention", "1e3", 1.5, "not a whole number|without a fraction"),
    ("timeout", "0", 0, "at least 1"),
    ("timeout", "soon", "soon", "not a whole number|not a str"),
    ("timeout", "99999999999999999999", 10**20, "at most"),
    ("worker_poll_interval_ms", "0", 0, "at least 10 .below 10 ms"),
    ("worker_poll_interval_ms", "5", 5, "at least 10"),
    ("worker_stats_every", "-1", -1, "at least 0"),
    ("worker_max_jobs_per_process", "-5", -5, "at least 0"),
    ("worker_max_pending_per_process", "0", 0, "at least 1"),
    ("worker_max_pending_per_process", "10001", 10001, "at most 10000"),
    ("worker_max_processes", "-1", -1, "at least 0"),
    ("worker_max_processes", "100000", 100000, "at most 1024"),
    ("worker_lost_after", "0", 0, "at least 1"),
    ("worker_shutdown_grace", "-1", -1, "at least 0"),
    ("worker_timeout_grace", "-3", -3, "at least 0"),
    ("worker_quarantine_after", "0", 0, "at least 1"),
    ("worker_pool", "thread", "thread", "not one of processes, threads"),
    ("worker_listen", "maybe", 2, "must be 1 or 0"),
    ("max_message_size", "100", 100, "at least 1024"),
    ("max_message_size", str(2**31), 2**31, "at most 1073741824"),
    ("schedule_timezone", "Mars/Olympus", "Mars/Olympus", "not a time zone"),
    ("schedule_catch_up_window", "-1", -1, "at least 0"),
    ("database_url", "mssql://u:s3cret@h/db", "mssql://u:s3cret@h/db", "supports PostgreSQL, MySQL/MariaDB and SQLite"),
    ("database_url", "postgresql://u:s3cret@h:99999/db", "postgresql://u:s3cret@h:99999/db", "port 99999"),
    ("database_url", "sqlite://u:s3cret@h:port/x", "sqlite://u:s3cret@h:port/x", "port that is not a number"),
    ("database_url", " ", " ", "it is empty"),
    ("middleware", "nodots", ["nodots"], "not a dotted path"),
    ("middleware", '["a.B", ""]', ["a.B", ""], "item 2 is an empty name"),
    ("packages", "my-package", ["my-package"], "not a module name"),
    ("worker_queues", "", [], "the list is empty"),
    ("worker_queues", "q" * 256, ["q" * 256], "at most 255 characters"),
    ("schedule", '[["app.jobs.X", ""]]', [["app.jobs.X", ""]], "it is empty"),
    ("schedule", '[["app.jobs.X", "  "]]', [["app.jobs.X", "  "]], "it is empty"),
    ("schedule", '[["app.jobs.X", "61 * * * *"]]', [["app.jobs.X", "61 * * * *"]], "out of range"),
    ("schedule", '[["app.jobs.X"]]', [["app.jobs.X"]], "not a .job, cron. pair"),
    ("schedule", "app.jobs.X", "app.jobs.X", "not valid JSON|must be a list"),
    ("schedule", '[["cmd:", "@daily"]]', [["cmd:", "@daily"]], "the job is empty"),
    ("app", "my app", "my app", "not a module name"),
    ("session_factory", "factory", "factory", "not a dotted path"),
]

IDS = [f"{name}={env!r}" for name, env, _, _ in BAD]


def _assert_names(exc: BaseException, name: str, fragment: str, source_text: str) -> None:
    message = str(exc)
    assert name in message, message
    assert source_text in message, message
    assert "Fix: set" in message, message
    assert re.search(fragment, message), message
    assert "s3cret" not in message, message


@pytest.mark.parametrize(("name", "env", "value", "fragment"), BAD, ids=IDS)
def test_bad_value_in_the_environment(clean: Path, monkeypatch: pytest.MonkeyPatch, name: str, env: str, value: Any, fragment: str) -> None:
    variable = "JOBTABLE_" + name.upper()
    monkeypatch.setenv(variable, env)
    with pytest.raises(ConfigurationError) as info:
        jobtable.get_settings()
    _assert_names(info.value, name, fragment, f"{variable}=")
    assert "(from the environment)" in str(info.value)


@pytest.mark.parametrize(("name", "env", "value", "fragment"), BAD, ids=IDS)
def test_bad_value_in_configure(clean: Path, name: str, env: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        jobtable.configure(**{name: value})
    _assert_names(info.value, name, fragment, f"configure({name}=")
    # Refused, and not kept: the next read still works.
    assert getattr(jobtable.get_settings(), name) == getattr(Settings(), name)


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays are TOML too


@pytest.mark.parametrize(("name", "env", "value", "fragment"), BAD, ids=IDS)
def test_bad_value_in_pyproject(clean: Path, name: str, env: str, value: Any, fragment: str) -> None:
    path = clean / "pyproject.toml"
    path.write_text(f"[tool.jobtable]\n{name} = {_toml(value)}\n")
    with pytest.raises(ConfigurationError) as info:
        jobtable.get_settings()
    _assert_names(info.value, name, fragment, f"in [tool.jobtable] of {path}")


def test_settings_made_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match=r"Settings\(timeout=\.\.\.\) = 0"):
        Settings(timeout=0)
    with pytest.raises(ConfigurationError, match="worker_poll_interval_ms"):
        Settings().replace(worker_poll_interval_ms=0)


@pytest.mark.parametrize(
    ("value", "message"),
    [(True, "not true/false"), (math.inf, "finite"), (math.nan, "finite"), (None, "not a NoneType"), ([1], "not a list")],
)
def test_numbers_refuse_bools_infinities_and_other_types(clean: Path, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        jobtable.configure(timeout=value)


def test_values_are_coerced(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTABLE_TIMEOUT", " 1_000 ")
    monkeypatch.setenv("JOBTABLE_WORKER_LISTEN", "off")
    monkeypatch.setenv("JOBTABLE_WORKER_POOL", "Threads")
    monkeypatch.setenv("JOBTABLE_WORKER_QUEUES", " a , b ")
    s = jobtable.get_settings()
    assert (s.timeout, s.worker_listen, s.worker_pool, s.worker_queues) == (1000, 0, "threads", ["a", "b"])
    (clean / "pyproject.toml").write_text("[tool.jobtable]\nworker_listen = false\ntimeout = 60.0\n")
    monkeypatch.delenv("JOBTABLE_WORKER_LISTEN")
    monkeypatch.delenv("JOBTABLE_TIMEOUT")
    settings.reset()
    assert (jobtable.get_settings().worker_listen, jobtable.get_settings().timeout) == (0, 60)


def test_a_masked_password_even_when_the_url_cannot_be_parsed(clean: Path) -> None:
    for url in ["postgresql://user:p@ss:w0rd@h:notaport/db", "postgresql://h:x/db?password=s3cret"]:
        with pytest.raises(ConfigurationError) as info:
            jobtable.configure(database_url=url)
        assert "p@ss" not in str(info.value) and "w0rd" not in str(info.value) and "s3cret" not in str(info.value)
        assert "***" in str(info.value)


def test_unknown_names_get_the_closest_one(clean: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"databse_url \(did you mean database_url\?\)"):
        jobtable.configure(databse_url="x")
    (clean / "pyproject.toml").write_text("[tool.jobtable]\nresults_retension = 1\n")
    with pytest.raises(ConfigurationError, match=r"results_retension \(did you mean results_retention\?\)"):
        jobtable.get_settings()


# -- command-line flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"processes": -1}, "--max-processes -1 .on the command line.: it must be at least 0"),
        ({"processes": 5000}, "--max-processes 5000 .*at most 1024"),
        ({"max_pending_per_process": 0}, "--max-pending-per-process 0 .*at least 1"),
        ({"max_jobs_per_process": -1}, "--max-jobs-per-process -1 .*at least 0"),
        ({"stats_every": -0.5}, "--stats-every -0.5 .*at least 0"),
        ({"stats_every": math.nan}, "--stats-every nan .*finite"),
        ({"stats_every": math.inf}, "--stats-every inf .*finite"),
        ({"queues": [""]}, "--queue .*empty name"),
        ({"pool": "fork"}, "--pool 'fork' .*not one of processes, threads"),
    ],
)
def test_worker_flags_are_checked_like_their_settings(clean: Path, flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerConfig.from_settings(**flags)


def test_worker_config_made_in_code_is_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"WorkerConfig\(poll_interval=0\)"):
        WorkerConfig(poll_interval=0).check()
    with pytest.raises(ConfigurationError, match=r"WorkerConfig\(stats_every=\.\.\.\) = -1"):
        WorkerConfig(stats_every=-1).check()
    with pytest.raises(ConfigurationError, match=r"WorkerConfig\(processes=0\)"):
        WorkerConfig(processes=0).check()
    WorkerConfig(stats_every=0.25, poll_interval=0.01).check()  # fractions of seconds are fine


# -- unknown JOBTABLE_* variables -------------------------------------------------------------------


def test_unknown_variables_are_warned_about_once(clean: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    misspelled = f"JOBTABLE_RESULTS_RETENTON{uuid.uuid4().hex[:4].upper()}"
    monkeypatch.setenv(misspelled, "60")
    monkeypatch.setenv("JOBTABLE_TEST_SOMETHING", "reserved for the test suite")
    with caplog.at_level(logging.WARNING, logger="jobtable.settings"):
        jobtable.get_settings()
        settings.reset()
        jobtable.get_settings()
    warnings = [r.getMessage() for r in caplog.records if r.name == "jobtable.settings"]
    assert warnings == [f"Unknown environment variable {misspelled} is ignored (did you mean JOBTABLE_RESULTS_RETENTION?)."]
    assert jobtable.get_settings().results_retention == 604800


def _envvars(command: click.Command) -> set[str]:
    found = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    for sub in getattr(command, "commands", {}).values():
        found |= _envvars(sub)
    return found


def test_every_variable_the_command_reads_is_known() -> None:
    assert _envvars(main) - settings.known_variables() == set()


# -- where settings came from -------------------------------------------------------------------------


def test_sources_are_described_without_secrets(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.describe_sources().startswith("Settings: all defaults")
    assert settings.settings_file() is None
    (clean / "pyproject.toml").write_text('[tool.jobtable]\ntimeout = 5\npackages = ["app"]\n')
    jobtable.configure(database_url="postgresql://user:s3cret@db.example/jobs")
    monkeypatch.setenv("JOBTABLE_WORKER_POOL", "threads")
    settings.reset()
    jobtable.configure(database_url="postgresql://user:s3cret@db.example/jobs")
    text = settings.describe_sources()
    assert settings.settings_file() == clean / "pyproject.toml"
    assert f"[tool.jobtable] of {clean / 'pyproject.toml'}: packages=['app'], timeout=5" in text
    assert "configure(): database_url='postgresql://user:***@db.example/jobs'" in text
    assert "environment: worker_pool='threads'" in text
    assert "s3cret" not in text
    assert settings.setting_source("timeout") == Source("pyproject", "timeout", str(clean / "pyproject.toml"))
    assert settings.setting_source("worker_pool").kind == "env"
    assert settings.setting_source("results_retention").kind == "default"


# -- the real worker refuses to start -------------------------------------------------------------------


def _refused(env: dict[str, str], *args: str, app: str = "tests.worker_jobs") -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", app, "worker", "--burst", *args],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("settings_", "app", "message"),
    [
        ({"middleware": ["no_such_module.Timing"]}, "tests.worker_jobs",
         "Cannot load the job middleware 'no_such_module.Timing' .ModuleNotFoundError"),
        ({"middleware": ["tests.broken_import_module.Timing"]}, "tests.worker_jobs",
         "Cannot load the job middleware 'tests.broken_import_module.Timing' .RuntimeError: this module is broken"),
        ({"middleware": ["tests.bad_startup_app.NOT_A_CLASS"]}, "tests.worker_jobs",
         "'tests.bad_startup_app.NOT_A_CLASS' is 42, not a middleware class"),
        ({"schedule": [["no_such_module.Job", "0 9 * * *"]]}, "tests.worker_jobs",
         "schedule cannot load. JOBTABLE_SCHEDULE entry 'no_such_module.Job': cannot import it"),
        ({"schedule": [["tests.broken_import_module.Job", "0 9 * * *"]]}, "tests.worker_jobs",
         "JOBTABLE_SCHEDULE entry 'tests.broken_import_module.Job': cannot import it .RuntimeError"),
        ({"schedule": [["tests.worker_jobs.Noop", ""]]}, "tests.worker_jobs",
         "JOBTABLE_SCHEDULE=.*Invalid cron expression '': it is empty"),
        ({}, "tests.bad_startup_app", "tests.bad_startup_app.BlankSchedule.schedule: Invalid cron expression '   ': it is empty"),
        ({"schedule_catch_up_window": -1}, "tests.worker_jobs", "JOBTABLE_SCHEDULE_CATCH_UP_WINDOW='-1'.*at least 0"),
        ({"worker_poll_interval_ms": 0}, "tests.worker_jobs", "JOBTABLE_WORKER_POLL_INTERVAL_MS='0'.*at least 10"),
        ({"worker_stats_every": -1}, "tests.worker_jobs", "JOBTABLE_WORKER_STATS_EVERY='-1'.*at least 0"),
        ({"worker_max_jobs_per_process": -1}, "tests.worker_jobs", "JOBTABLE_WORKER_MAX_JOBS_PER_PROCESS='-1'"),
    ],
    ids=["middleware-missing", "middleware-broken", "middleware-not-a-class", "schedule-missing", "schedule-broken",
         "cron-empty", "cron-blank-attribute", "catch-up", "poll", "stats", "max-jobs"],
)
def test_the_worker_refuses_to_start(
    db_url: str, subprocess_env: dict[str, str], tmp_path: Path, settings_: dict[str, Any], app: str, message: str
) -> None:
    log = str(tmp_path / "ran.log")
    Log(log, "x").run_in_worker()
    out = _refused(worker_env(subprocess_env, **settings_), app=app)
    assert re.search(message, out), out
    assert lines(log) == []  # no member started, nothing ran
    assert [line.startswith("Error: ") for line in out.splitlines()].count(True) == 1


def test_bad_retention_refuses_to_start_and_deletes_nothing(db_url: str, subprocess_env: dict[str, str]) -> None:
    request = Log("/dev/null", "x").run_in_worker()
    assert request is not None
    with db_engine.get_engine().begin() as conn:
        (row,) = claims_sql.claim(conn, ["default"], 1, worker_id="w", now=clock.utcnow())
        conn.execute(tables.request.delete().where(tables.request.c.id == row.id))
        conn.execute(tables.result.insert().values(result_rows.result_values(row, tables.SUCCESSFUL, ended_at=clock.utcnow())))
    out = _refused(worker_env(subprocess_env, results_retention=-1))
    assert "JOBTABLE_RESULTS_RETENTION='-1'" in out and "would delete every result" in out
    assert [r.task_id for r in results()] == [request.uuid]


def test_a_bad_flag_refuses_to_start(db_url: str, subprocess_env: dict[str, str]) -> None:
    out = _refused(worker_env(subprocess_env), "--max-pending-per-process", "0")
    assert "--max-pending-per-process 0 (on the command line): it must be at least 1" in out


def test_the_worker_warns_about_unknown_variables_and_logs_its_sources(
    db_url: str, subprocess_env: dict[str, str]
) -> None:
    env = worker_env(subprocess_env, worker_pol_interval_ms=5)
    proc = start_worker(env, "--burst", "--max-processes", "1", "--stats-every", "0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    warning = "Unknown environment variable JOBTABLE_WORKER_POL_INTERVAL_MS is ignored (did you mean JOBTABLE_WORKER_POLL_INTERVAL_MS?)"
    assert out.count(warning) == 1, out
    assert "Settings: environment: database_url=" in out
    assert "worker_lost_after=2" in out


# -- databases: a newer schema, a missing file -------------------------------------------------------------


FUTURE = "9999_from_the_future"


@pytest.fixture
def private_url(dialect: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database of this test alone (it is stamped with a revision
    this jobtable does not know)."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'newer.sqlite3'}"
        migrate.upgrade(db_engine.create_jobtable_engine(url))
        yield url
        return
    name = f"jobtable_test_newer_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = db_engine.create_jobtable_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        db_engine.reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_database_migrated_by_a_newer_jobtable(private_url: str) -> None:
    engine = db_engine.create_jobtable_engine(private_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = :v"), {"v": FUTURE})
    engine.dispose()
    db_engine.reset_engines()
    expected = f"was migrated by a newer jobtable (schema revision '{FUTURE}')"
    with pytest.raises(SchemaTooNew, match=r"newer jobtable .*Upgrade jobtable") as info:
        db_engine.check_schema(db_engine.get_engine(private_url))
    assert expected in str(info.value) and isinstance(info.value, SchemaNotMigrated)
    assert "Run `jobtable migrate`" not in str(info.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    env.update(JOBTABLE_DATABASE_URL=private_url, PYTHONPATH=str(ROOT))
    for command in (["migrate"], ["stats"], ["results"]):
        proc = subprocess.run([sys.executable, "-m", "jobtable", *command], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert expected in proc.stderr and "upgrade jobtable" in proc.stderr.lower(), proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
    with db_engine.create_jobtable_engine(private_url).connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalar() == FUTURE


def test_no_database_configured_creates_no_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    env["PYTHONPATH"] = str(ROOT)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jobtable", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    for command in (["results"], ["stats"], ["requests"]):
        proc = run(*command)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"The SQLite database file {tmp_path / 'jobtable.sqlite3'} does not exist" in proc.stderr, proc.stderr
        assert "No database is configured" in proc.stderr and "Create it with `jobtable migrate`" in proc.stderr
        assert list(tmp_path.iterdir()) == []  # nothing was created
    assert run("migrate").returncode == 0
    assert (tmp_path / "jobtable.sqlite3").is_file()
    proc = run("results")
    assert proc.returncode == 0, proc.stderr


def test_a_missing_configured_file_is_named(clean: Path) -> None:
    jobtable.configure(database_url=f"sqlite:///{clean / 'gone.sqlite3'}")
    result = CliRunner().invoke(main, ["results"])
    assert result.exit_code == 1
    assert f"The SQLite database file {clean / 'gone.sqlite3'} does not exist" in result.output
    assert "No database is configured" not in result.output  # it is configured, just missing
    assert not (clean / "gone.sqlite3").exists()


# -- property tests --------------------------------------------------------------------------------------

ENV_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
NAMES = sorted(f.upper() for f in settings._RULES)


def _env_value(name: str) -> st.SearchStrategy[str]:
    # Arbitrary text, and text near the valid values (numbers, lists, JSON).
    return st.one_of(
        ENV_TEXT,
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.lists(ENV_TEXT, max_size=3).map(json.dumps),
        st.lists(st.lists(ENV_TEXT, max_size=3), max_size=2).map(json.dumps),
        st.sampled_from(["", " ", "0", "1", "true", "UTC", "Europe/Berlin", "a.b", "[]", "[[", "sqlite:///x.db",
                         "postgresql://u:p@h/db", "processes", "threads", "*", "@daily"]),
    )


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    chosen = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    return {f"JOBTABLE_{name}": draw(_env_value(name)) for name in chosen}


def _assert_valid(s: Settings) -> None:
    for name, rule in settings._RULES.items():
        value = getattr(s, name)
        assert settings.check_value(name, value, Source("argument", name)) == value
        if rule.kind == "int":
            assert rule.low is not None and rule.high is not None
            assert isinstance(value, int) and rule.low <= value <= rule.high


@PROPERTY
@given(environments())
def test_any_environment_gives_valid_settings_or_a_configuration_error(env: dict[str, str]) -> None:
    saved = {k: v for k, v in os.environ.items() if k.startswith("JOBTABLE_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        settings.reset()
        try:
            s = jobtable.get_settings()
        except ConfigurationError as exc:
            message = str(exc)
            assert any(key in message for key in env), message
            assert "Fix:" in message or "Unknown" in message
            return
        _assert_valid(s)
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)
        settings.reset()


PY_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ENV_TEXT, st.binary(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(ENV_TEXT, inner, max_size=2)),
    max_leaves=6,
)


@PROPERTY
@given(st.sampled_from(sorted(settings._RULES)), PY_VALUES)
def test_any_configure_value_is_accepted_or_a_configuration_error(name: str, value: Any) -> None:
    settings.reset()
    try:
        try:
            s = jobtable.configure(**{name: value})
        except ConfigurationError as exc:
            assert f"configure({name}=" in str(exc)
            return
        _assert_valid(s)
    finally:
        settings.reset()
        db_engine.reset_engines()


class _Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


ADVERSARIAL = ["a\x00b", "\udc80", "\ud800x", "x" * 100_000, _Hostile(), [_Hostile()], _nested(10_000), b"\xff", {"a": 1}]


@pytest.mark.parametrize("name", sorted(settings._RULES))
def test_adversarial_values_get_a_configuration_error(clean: Path, name: str) -> None:
    for value in ADVERSARIAL:
        try:
            jobtable.configure(**{name: value})
        except ConfigurationError as exc:
            message = str(exc)
            assert f"configure({name}=" in message and len(message) < 3000, message[:300]
        else:  # accepted: only a value the setting can really use
            assert name == "schedule" and value == [] or isinstance(getattr(jobtable.get_settings(), name), str)
        finally:
            settings.reset()
