"""Jobs and helpers for the dashboard tests: a tiny stand-in for the worker
(claim one job, run it in this process, record its result) so that tests do
not depend on the native worker's timing."""

from __future__ import annotations

import json
import traceback
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert

from jobtable import Job, register_job
from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, result_rows, tables
from jobtable.execution import instantiate
from jobtable.messages import decode_task


@register_job
class Flaky(Job):
    """Fails while ``Flaky.failing`` is true (class-wide switch for tests)."""

    failing = True

    def __init__(self, payload: str) -> None:
        self.payload = payload

    def run(self) -> Any:
        if Flaky.failing:
            raise ValueError(f"cannot handle {self.payload}")
        return {"handled": self.payload}


@register_job
class Noop(Job):
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def run(self) -> None:
        return None


FLAKY = Flaky.job_name()
NOOP = Noop.job_name()


def run_next(queues: tuple[str, ...] = ("default",), worker_id: str = "native:test-1") -> str | None:
    """Claim the next pending job, run it here, write its result.  Returns
    the status, or None when nothing was pending."""
    engine = db_engine.get_engine()
    now = clock.utcnow()
    with db_engine.connect(engine) as conn, conn.begin():
        claims_sql.promote_due(conn, now)
        rows = claims_sql.claim(conn, list(queues), 1, worker_id=worker_id, now=now)
    if not rows:
        return None
    row = rows[0]
    call = decode_task(row.message)
    fields: dict[str, Any]
    try:
        value = instantiate(row.task_name, call.args, call.kwargs).run()
        status, fields = tables.SUCCESSFUL, {"return_value": json.dumps(value)}
    except Exception as exc:  # noqa: BLE001 - recorded like the worker does
        status = tables.ERRORED
        fields = {
            "error_type": type(exc).__name__,
            "error_message": str(exc),
            "traceback": traceback.format_exc(),
        }
    with db_engine.connect(engine) as conn, conn.begin():
        conn.execute(delete(tables.request).where(tables.request.c.id == row.id))
        conn.execute(insert(tables.result).values(result_rows.result_values(row, status, ended_at=clock.utcnow(), **fields)))
    return status


def add_result(status: str = tables.SUCCESSFUL, *, task_name: str = "tests.other.Job", queue: str = "default",
               ago: timedelta = timedelta(minutes=5), attempt: int = 1, **fields: Any) -> int:
    """Insert a result row directly (for listings and counts)."""
    import uuid

    from jobtable import messages

    now = clock.utcnow()
    task_id = fields.pop("task_id", None) or str(uuid.uuid4())
    envelope = messages.task_message(task_name=task_name, task_id=task_id, args=[1], kwargs={}, queue=queue,
                                     priority=0, eta=None, attempt=attempt)
    ended = now - ago
    values = {
        "task_id": task_id, "task_name": task_name, "queue": queue, "priority": 0, "attempt": attempt,
        "retries": 0, "status": status, "requested_at": ended - timedelta(seconds=3),
        "started_at": ended - timedelta(seconds=1), "ended_at": ended, "worker_id": "native:w",
        "message": messages.dumps(envelope), **fields,
    }
    with db_engine.connect() as conn, conn.begin():
        return int(conn.execute(insert(tables.result).values(values).returning(tables.result.c.id)).scalar_one())


@register_job
class FileGate(Job):
    """Fails until a file exists: a switch that works across processes
    (for tests that run a real worker)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self) -> Any:
        import os

        if not os.path.exists(self.path):
            raise RuntimeError(f"gate closed: {self.path}")
        return {"passed": self.path}
