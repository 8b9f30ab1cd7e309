"""A project's ``app`` package is found without any setting (plain's
convention), and ``jobtable worker run`` is plain.worker's spelling of
``jobtable worker``: real project directories, real CLI processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

JOBS = '''
from jobtable import Job, register_job


@register_job
class Hello(Job):
    """Says hello."""

    def __init__(self, name: str = "world") -> None:
        self.name = name

    def run(self) -> str:
        return f"hello {self.name}"
'''

CHORES = '''
from jobtable.chores import register_chore


@register_chore("app")
def tidy() -> str:
    """Tidy the app's files."""
    return "tidied"
'''

BILLING_JOBS = '''
from jobtable import Job, register_job


@register_job
class Invoice(Job):
    def run(self) -> None:
        return None
'''


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def project(tmp_path: Path, *, init: bool = True) -> Path:
    root = tmp_path / "proj"
    if init:
        write(root / "app" / "__init__.py", "")
    write(root / "app" / "jobs.py", JOBS)
    write(root / "app" / "chores.py", CHORES)
    # app/{pkg}/jobs.py is imported too; a subpackage without jobs.py or
    # chores.py is not imported at all.
    write(root / "app" / "billing" / "__init__.py", "")
    write(root / "app" / "billing" / "jobs.py", BILLING_JOBS)
    write(root / "app" / "web" / "__init__.py", "raise RuntimeError('app.web must not be imported')\n")
    return root


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTABLE_")}
    env["JOBTABLE_DATABASE_URL"] = f"sqlite:///{root / 'jobs.sqlite3'}"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def jobtable(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobtable", *args],
        cwd=root,
        env=env_for(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python(root: Path, code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env_for(root), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("init", [True, False], ids=["package", "namespace-package"])
def test_app_jobs_and_chores_are_found_without_a_setting(tmp_path: Path, init: bool) -> None:
    root = project(tmp_path, init=init)
    listed = jobtable(root, "list")
    assert listed.returncode == 0, listed.stderr
    assert "app.jobs.Hello  Says hello." in listed.stdout
    assert "app.billing.jobs.Invoice" in listed.stdout
    chores = jobtable(root, "chores", "list")
    assert chores.returncode == 0, chores.stderr
    assert "app.tidy" in chores.stdout and "Tidy the app's files." in chores.stdout
    ran = jobtable(root, "run", "app.jobs.Hello", "--args", '["you"]')
    assert ran.returncode == 0 and ran.stdout.strip() == "hello you", ran.stderr


def test_an_explicit_app_setting_wins(tmp_path: Path) -> None:
    root = project(tmp_path)
    write(root / "other.py", JOBS.replace("Hello", "OtherHello"))
    listed = jobtable(root, "--app", "other", "list")
    assert listed.returncode == 0, listed.stderr
    assert "other.OtherHello" in listed.stdout and "app.jobs.Hello" not in listed.stdout


def test_no_app_directory_no_jobs(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    listed = jobtable(root, "list")
    assert listed.returncode == 0, listed.stderr
    # Only jobtable's built-in jobs.
    assert [line.split()[0].split(".")[0] for line in listed.stdout.splitlines()] == ["jobtable", "jobtable"]


def test_worker_run_is_worker(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert jobtable(root, "migrate").returncode == 0
    enqueue = "from app.jobs import Hello\nfor name in ('a', 'b'):\n    Hello(name).run_in_worker(queue='x')\n"
    python(root, enqueue)
    # plain.worker's spelling; the worker imports app/jobs.py by itself.
    first = jobtable(root, "worker", "run", "--queue", "x", "--burst", "--max-processes", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    python(root, "from app.jobs import Hello\nHello('c').run_in_worker(queue='x')\n")
    second = jobtable(root, "worker", "--queue", "x", "--burst", "--max-processes", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    values = python(
        root,
        "from jobtable import JobResult\n"
        "for r in JobResult.query.filter(queue='x'):\n    print(r.status, r.value)\n",
    )
    assert sorted(values.splitlines()) == ["SUCCESSFUL hello a", "SUCCESSFUL hello b", "SUCCESSFUL hello c"]
    wrong = jobtable(root, "worker", "walk")
    assert wrong.returncode == 2 and "'walk' is not 'run'" in wrong.stderr
