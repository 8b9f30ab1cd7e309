"""The Celery-free API works with Celery absent: a child process in which
``import celery`` fails sends tasks, runs the native worker (its Python entry
point and the ``jobtable worker`` command) and reads the results."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.shim_support import BLOCK_CELERY, run_burst
from tests.worker_jobs import ROOT, results, worker_env

SCRIPT = (
    BLOCK_CELERY
    + """
import json
import sys

try:
    import celery  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("celery was importable")

from jobtable.shim import AsyncResult, Celery, chain, chord, group, shared_task  # the documented imports
from tests import shim_tasks as t
from jobtable.worker.config import WorkerConfig
from jobtable.worker.main import run_worker

sent = {
    "add": t.add.delay(2, 3).id,
    "chain": chain(t.add.s(1, 2), t.add.s(3)).delay().id,
    "group": [r.id for r in group(t.add.s(i, i) for i in range(3)).delay()],
    "chord": chord([t.add.s(1, 1), t.add.s(2, 2)])(t.total.s()).id,
    "whoami": t.whoami.delay("no celery").id,
}
print(json.dumps(sent), flush=True)
exit_code = run_worker(WorkerConfig(queues=["celery", "other"], processes=1, burst=True, stats_every=0))
values = {
    "exit": exit_code,
    "add": AsyncResult(sent["add"]).get(timeout=10),
    "chain": AsyncResult(sent["chain"]).get(timeout=10),
    "group": [AsyncResult(i).get(timeout=10) for i in sent["group"]],
    "chord": AsyncResult(sent["chord"]).get(timeout=10),
    "whoami": AsyncResult(sent["whoami"]).get(timeout=10)["tag"],
    "celery_loaded": sorted(n for n in sys.modules if n == "celery" or n.startswith("celery.")),
}
print(json.dumps(values), flush=True)
"""
)


def test_api_and_worker_without_celery(db_url: str, subprocess_env: dict[str, str]) -> None:
    env = worker_env(subprocess_env)
    # The child sends, runs the worker in-process and reads the results.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sent_line, values_line = done.stdout.strip().splitlines()[-2:]
    values = json.loads(values_line)
    assert values == {
        "exit": 0,
        "add": 5,
        "chain": 6,
        "group": [0, 2, 4],
        "chord": 6,
        "whoami": "no celery",
        "celery_loaded": [],
    }
    assert json.loads(sent_line)["add"] in {r.task_id for r in results()}

    # The `jobtable worker` command, Celery blocked as well.
    from tests import shim_tasks as t

    sent = t.add.delay(20, 22)
    assert sent is not None
    out = run_burst(subprocess_env, block_celery=True)
    assert "Traceback" not in out, out
    assert sent.get(timeout=10) == 42
