"""Every refusal of the worker's configuration (WorkerConfig.from_settings
and WorkerConfig.check): through the real ``jobtable worker`` command, each
flag and each worker setting it follows, refused at start with exit code 1
and one error naming the option and its fix; and the refusals only code can
reach (a WorkerConfig built by hand)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from jobtable.exceptions import ConfigurationError
from jobtable.worker.config import CHECKED, FLAGS, MAX_POLL, MIN_POLL, WorkerConfig
from tests.conftest import ROOT


def _worker(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A database that does not exist: a refusal must come before any
    # database work (the missing file would be the error otherwise).
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    environ.update(PYTHONPATH=str(ROOT), JOBTABLE_DATABASE_URL=f"sqlite:///{tmp_path}/never-created.sqlite3", **env)
    return subprocess.run(
        [sys.executable, "-c", "from jobtable.cli import main; main()", "--app", "tests.worker_jobs", "worker",
         "--burst", *args],
        env=environ, cwd=str(ROOT), capture_output=True, text=True, timeout=60,
    )


def _assert_refused(proc: subprocess.CompletedProcess[str], tmp_path: Path, *expected: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    (error,) = [line for line in out.splitlines() if line.startswith("Error: ")]
    for text in expected:
        assert re.search(text, error), (text, error)
    assert not (tmp_path / "never-created.sqlite3").exists()  # refused before touching the database
    return error


FLAG_CASES = [
    (("--max-processes", "-1"), "--max-processes -1 .on the command line.: it must be at least 0",
     "Fix: set --max-processes to a whole number from 0 to 1024"),
    (("--max-jobs-per-process", "-1"), "--max-jobs-per-process -1 .on the command line.: it must be at least 0",
     "Fix: set --max-jobs-per-process to a whole number"),
    (("--max-pending-per-process", "0"), "--max-pending-per-process 0 .on the command line.: it must be at least 1",
     "Fix: set --max-pending-per-process to a whole number from 1 to 10000"),
    (("--max-pending-per-process", "10001"), "--max-pending-per-process 10001 .on the command line.: it must be at most 10000",
     "Fix: set --max-pending-per-process"),
    (("--stats-every", "-1"), r"--stats-every -1(\.0)? .on the command line.: it must be at least 0",
     "Fix: set --stats-every to a number of seconds"),
    (("--queue", ""), r"--queue \[''\] .on the command line.: item 1 is an empty name",
     "Fix: set --queue to a list of non-empty names"),
]


@pytest.mark.parametrize(("args", "problem", "fix"), FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_each_bad_flag_refuses_to_start(tmp_path: Path, args: tuple[str, ...], problem: str, fix: str) -> None:
    _assert_refused(_worker(tmp_path, *args), tmp_path, "^Error: Invalid setting ", problem, fix)


def test_every_checked_flag_has_a_case() -> None:
    # --pool is a click choice (test below); every other flag is checked by its setting's rule.
    assert {args[0] for args, _, _ in FLAG_CASES} == {flag for key, (flag, _, _) in FLAGS.items() if key != "pool"}


def test_an_unknown_pool_is_refused_by_the_command(tmp_path: Path) -> None:
    proc = _worker(tmp_path, "--pool", "forks")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # click's usage error
    assert "Invalid value for '--pool': 'forks' is not one of 'processes', 'threads'" in proc.stderr


SETTING_CASES = [
    ("JOBTABLE_WORKER_MAX_PROCESSES", "-1", "at least 0"),
    ("JOBTABLE_WORKER_POOL", "forks", "processes.*threads"),
    ("JOBTABLE_WORKER_QUEUES", "[]", "at least one"),
    ("JOBTABLE_WORKER_MAX_JOBS_PER_PROCESS", "-1", "at least 0"),
    ("JOBTABLE_WORKER_MAX_PENDING_PER_PROCESS", "0", "at least 1"),
    ("JOBTABLE_WORKER_STATS_EVERY", "-1", "at least 0"),
    ("JOBTABLE_WORKER_LOST_AFTER", "0", "at least"),
    ("JOBTABLE_WORKER_SHUTDOWN_GRACE", "-1", "at least 0"),
    ("JOBTABLE_TIMEOUT", "0", "at least"),
    ("JOBTABLE_WORKER_TIMEOUT_GRACE", "-1", "at least 0"),
    ("JOBTABLE_RESULTS_RETENTION", "-1", "would delete every result"),
    ("JOBTABLE_WORKER_QUARANTINE_AFTER", "0", "at least 1"),
    ("JOBTABLE_MIDDLEWARE", "not json", ""),
    ("JOBTABLE_WORKER_POLL_INTERVAL_MS", "5", "at least 10"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_each_bad_worker_setting_refuses_to_start(tmp_path: Path, variable: str, value: str, problem: str) -> None:
    error = _assert_refused(_worker(tmp_path, **{variable: value}), tmp_path, problem)
    assert f"{variable}={value!r}" in error, error  # the option, as it was given
    assert "Fix:" in error or "e.g." in error, error


def test_every_checked_field_follows_a_refused_setting() -> None:
    tested = {variable.removeprefix("JOBTABLE_").lower() for variable, _, _ in SETTING_CASES}
    assert {setting for setting, _ in CHECKED.values()} <= tested


# -- WorkerConfig.check: a config built in code ------------------------------------------------

BAD_FIELDS: dict[str, Any] = {
    "queues": [],
    "processes": -1,
    "pool": "forks",
    "max_jobs_per_process": -1,
    "max_pending_per_process": 0,
    "stats_every": -1,
    "lost_after": 0,
    "shutdown_grace": -1,
    "timeout": 0,
    "timeout_grace": -1,
    "results_retention": -1,
    "quarantine_after": -1,
    "middleware": "not a list",
}


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_check_refuses_each_field_naming_it(name: str) -> None:
    config = replace(WorkerConfig(), **{name: BAD_FIELDS[name]})
    with pytest.raises(ConfigurationError, match=re.escape(f"WorkerConfig({name}=...)")) as info:
        config.check()
    assert "Fix:" in str(info.value), str(info.value)


def test_check_refuses_no_process() -> None:
    with pytest.raises(ConfigurationError, match=r"WorkerConfig\(processes=0\): a worker needs 1 process or more "
                                                 r"\(--max-processes 0 means one per CPU\)"):
        WorkerConfig(processes=0).check()


@pytest.mark.parametrize("poll", [MIN_POLL / 2, MAX_POLL * 2, True, "1", None])
def test_check_refuses_a_poll_interval_out_of_range(poll: Any) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"WorkerConfig(poll_interval={poll!r})")) as info:
        WorkerConfig(poll_interval=poll).check()
    assert "Set JOBTABLE_WORKER_POLL_INTERVAL_MS, e.g. 1000." in str(info.value)


def test_the_defaults_and_the_bounds_pass() -> None:
    WorkerConfig().check()
    WorkerConfig(poll_interval=MIN_POLL).check()
    WorkerConfig(poll_interval=MAX_POLL).check()
    assert set(BAD_FIELDS) == set(CHECKED) and set(CHECKED) <= {f.name for f in fields(WorkerConfig)}
