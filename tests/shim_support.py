"""Helpers of the shim tests: the native worker with ``--app tests.shim_tasks``
on the shim's queues, and a finder that makes ``import celery`` fail."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.worker_jobs import ROOT, worker_env

#: The shim keeps Celery's default queue; ``whoami`` is routed to "other".
QUEUES = ("--queue", "celery", "--queue", "other")

#: Python source run first in a child process: ``import celery`` (and its
#: submodules) raises ModuleNotFoundError, as if Celery were not installed.
BLOCK_CELERY = """
import sys
class _NoCelery:
    def find_spec(self, name, path=None, target=None):
        if name == "celery" or name.startswith("celery."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoCelery())
for _name in [n for n in sys.modules if n == "celery" or n.startswith("celery.")]:
    del sys.modules[_name]
"""


def start_worker(env: dict[str, str], *args: str, block_celery: bool = False) -> subprocess.Popen[str]:
    """``jobtable --app tests.shim_tasks worker`` on the shim's queues."""
    code = (BLOCK_CELERY if block_celery else "") + "\nfrom jobtable.cli import main\nmain()\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--app", "tests.shim_tasks", "worker", *QUEUES, *args],
        env=worker_env(env),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_burst(env: dict[str, str], *args: str, timeout: float = 60, **kwargs: Any) -> str:
    """Run a worker until no job is due; returns its output."""
    proc = start_worker(env, "--burst", "--max-processes", "1", *args, **kwargs)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out
