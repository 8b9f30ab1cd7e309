"""A password in the database URL never leaves the process: not in what
``celery inspect stats/conf/report`` and ``celery report`` print, not in a
worker's log, not in the native worker's output.

A real PostgreSQL role with a password (the test server trusts every
connection, so any password works), real worker subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .conftest import ROOT, empty_tables
from .polling import terminate, wait_for

#: Special characters, percent-encoded in the URL: the raw, the encoded and
#: the alphanumeric part must all stay out.
PASSWORD = f"s3cret-{uuid.uuid4().hex[:8]}@:/?%é"


def leaks(output: str) -> list[str]:
    needles = {PASSWORD, quote(PASSWORD, safe=""), PASSWORD.split("@")[0]}
    return [n for n in needles if n in output]


@pytest.fixture
def env(secret_url: str) -> dict[str, str]:
    env = dict(os.environ, JOBTABLE_DATABASE_URL=secret_url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def secret_url(pg_url: str) -> Iterator[str]:
    """The test database (PostgreSQL: SQLite has no passwords), emptied and
    reached as a role with a password."""
    empty_tables(pg_url)
    role = f"jt_secret_{os.getpid()}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        # A literal: CREATE ROLE takes no bound parameters.
        literal = PASSWORD.replace("'", "''")
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{literal}'"))
        conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    url = make_url(pg_url).set(username=role, password=PASSWORD).render_as_string(hide_password=False)
    assert quote(PASSWORD, safe="")[:20] in url
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def _celery(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.secret_celery_app", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_celery_shows_no_password(secret_url: str, env: dict[str, str], tmp_path: Path) -> None:
    dead = make_url(secret_url).set(port=1).render_as_string(hide_password=False)
    env.update(
        # A failover alternate too: Kombu shows them in info()["alternates"].
        JT_BROKER_URL=f"jobtable+{secret_url}?application_name=jt-secret;jobtable+{dead}",
        JT_BACKEND_URL=f"jobtable+{secret_url}",
        JT_RECORD=str(tmp_path / "record.txt"),
    )
    record = Path(env["JT_RECORD"])
    log = tmp_path / "worker.log"
    name = f"secret{os.getpid()}@%h"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.secret_celery_app", "worker", "-P", "threads", "-c", "2",
         "-l", "info", "-n", name],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True,
    )
    try:
        wait_for(lambda: worker.poll() is not None or (record.exists() and "READY" in record.read_text()), 60, what="worker ready")
        assert worker.poll() is None, log.read_text()
        # The worker works: a task through the broker, its result through the backend.
        result = subprocess.run(
            [sys.executable, "-c", "from tests.secret_celery_app import add; print(add.delay(2, 3).get(timeout=60))"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.stdout.strip() == "5", result.stdout + result.stderr
        assert "add 2 3" in record.read_text()
        destination = ["-d", name.replace("%h", os.uname().nodename), "--timeout", "20"]
        outputs = {
            "inspect stats": _celery(env, "inspect", "stats", *destination),
            "inspect conf": _celery(env, "inspect", "conf", *destination),
            "inspect report": _celery(env, "inspect", "report", *destination),
            "report": _celery(env, "report"),
            "call": result.stdout + result.stderr,
        }
        stats = outputs["inspect stats"]
        host = make_url(secret_url).host
        assert f'"hostname": "{host}"' in stats and '"port": 5432' in stats, stats
        assert '"virtual_host": ' in stats and "application_name=jt-secret" in stats
        assert "jobtable+postgresql+psycopg" in outputs["inspect conf"]
        for command, output in outputs.items():
            assert not leaks(output), (command, leaks(output), output)
    finally:
        terminate(worker, timeout=30)
    shown = log.read_text()
    assert "Connected to jobtable+postgresql+psycopg://jt_secret_" in shown and ":**@" in shown, shown
    assert not leaks(shown), shown


def test_native_worker_shows_no_password(secret_url: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "worker", "--burst", "--log-level", "debug"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "jt_secret_" in output, output  # it did say which database
    assert not leaks(output), output
    # A database that is down: the error names it, without the password.
    dead = make_url(secret_url).set(port=1).render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-m", "jobtable", "stats"], env=dict(env, JOBTABLE_DATABASE_URL=dead),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "127.0.0.1:1" in output, output
    assert not leaks(output), output
