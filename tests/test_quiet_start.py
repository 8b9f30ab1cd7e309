"""Starting a worker on an up-to-date schema logs nothing of Alembic's; a
schema that is behind stops it with an error that says what to run.

Every process that opens the database checks its schema once; that check
used to go through Alembic, whose import and MigrationContext log nine INFO
lines -- into a Celery worker's log, for its main process and each pool
child (see ``jobtable/db/revisions.py``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from jobtable.db import engine as db_engine
from jobtable.db import migrate, revisions

from .polling import terminate, wait_for

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_LINE = re.compile(r"alembic|Context impl|Will assume", re.I)


def test_revisions_agree_with_alembic() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert revisions.head_revision() == scripts.get_current_head()
    assert revisions.known_revisions() == {s.revision for s in scripts.walk_revisions()}
    # Oldest first, each the parent of the next.
    chain = revisions.revision_chain()
    assert [scripts.get_revision(r).down_revision for r in chain] == [None, *chain[:-1]]


def test_schema_check_does_not_import_alembic(subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys, jobtable; from jobtable.db import engine; "
        "engine.check_schema(engine.get_engine()); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def _behind(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'behind.sqlite3'}"
    previous = revisions.revision_chain()[-2]
    migrate.upgrade(db_engine.create_jobtable_engine(url), previous)
    return url


def test_celery_worker_log_has_no_alembic_lines(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(subprocess_env, JT_QUEUE=f"quiet_{tmp_path.name}")
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.quiet_celery_app", "worker", "-l", "info", "-c", "2",
         "-P", "prefork", "-n", f"quiet{tmp_path.name}@%h"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    try:
        wait_for(lambda: proc.poll() is not None or " ready." in log.read_text(), timeout=60, what="worker ready")
        assert proc.poll() is None, log.read_text()
        # Both pool children open the database (a task each, results stored).
        check = (
            "from tests.quiet_celery_app import add; "
            "rs = [add.delay(i, 1) for i in range(4)]; print([r.get(timeout=60) for r in rs])"
        )
        done = subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "[1, 2, 3, 4]", done.stdout + done.stderr
    finally:
        terminate(proc, timeout=30)
    text = log.read_text()
    assert "succeeded in" in text, text  # the INFO lines are there, Alembic's are not
    assert not [line for line in text.splitlines() if ALEMBIC_LINE.search(line)], text


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_celery_worker_stops_on_a_schema_behind(dialect: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    url = _behind(tmp_path)
    env = dict(subprocess_env, JOBTABLE_DATABASE_URL=url)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.quiet_celery_app", "worker", "-l", "info", "-c", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0, done.stderr
    head, previous = revisions.head_revision(), revisions.revision_chain()[-2]
    assert f"is at revision {previous}, this version needs {head}. Run `jobtable migrate`" in done.stderr, done.stderr
    assert not [line for line in done.stderr.splitlines() if ALEMBIC_LINE.search(line)], done.stderr


def _native(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobtable", "--app", "tests.quiet_celery_app", "worker", "--burst",
         "--max-processes", "2", "--log-level", "info"],
        env=dict(env, JT_ROOT_INFO="1"), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_native_worker_log_has_no_alembic_lines(db_url: str, subprocess_env: dict[str, str]) -> None:
    enqueue = "import tests.quiet_celery_app as m; [m.QuietJob().run_in_worker() for _ in range(3)]"
    subprocess.run([sys.executable, "-c", enqueue], env=subprocess_env, cwd=ROOT, check=True, timeout=60)
    done = _native(subprocess_env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("ROOT tests.quiet quiet job ran") == 3, output  # the root logger shows INFO
    assert not [line for line in output.splitlines() if ALEMBIC_LINE.search(line)], output


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_native_worker_stops_on_a_schema_behind(dialect: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    done = _native(dict(subprocess_env, JOBTABLE_DATABASE_URL=_behind(tmp_path)))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Run `jobtable migrate` to upgrade it" in output, output
    assert not [line for line in output.splitlines() if ALEMBIC_LINE.search(line)], output
