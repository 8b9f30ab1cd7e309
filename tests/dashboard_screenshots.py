"""Screenshots of the dashboard for docs/dashboard/ (not a test).

    python -m tests.dashboard_screenshots docs/dashboard

Fills a throw-away SQLite queue with a day of plausible activity, serves the
dashboard and photographs each page in headless Chromium.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

import jobtable
from jobtable import messages
from jobtable.db import engine as db_engine
from jobtable.db import claims_sql, clock, migrate, tables

from . import dashboard_support as support
from .dashboard_browser import Server, launch_browser

JOBS = ["app.jobs.SendWelcomeEmail", "app.jobs.ChargeInvoice", "app.jobs.ResizeImage", "app.jobs.SyncCRM"]
QUEUES = ["default", "emails", "billing", "media"]


def fill() -> None:
    rng = random.Random(7)
    now = clock.utcnow()
    rows = []
    for i in range(4000):
        ended = now - timedelta(seconds=rng.uniform(0, 86400))
        status = rng.choices(
            [tables.SUCCESSFUL, tables.ERRORED, tables.LOST, tables.CANCELLED], [90, 7, 1, 2]
        )[0]
        task_id = str(uuid.uuid4())
        name = rng.choice(JOBS)
        wait = rng.expovariate(1 / (0.4 + 2 * (ended.hour in (9, 10, 14))))
        failed = status == tables.ERRORED
        rows.append(
            {
                "task_id": task_id, "task_name": name, "queue": rng.choice(QUEUES), "priority": 0,
                "attempt": 1, "retries": 0, "status": status,
                "requested_at": ended - timedelta(seconds=wait + 1), "started_at": ended - timedelta(seconds=1),
                "ended_at": ended, "worker_id": f"native:web-{i % 3}",
                "message": messages.dumps(messages.task_message(
                    task_name=name, task_id=task_id, args=[1000 + i], kwargs={"notify": True}, queue="default",
                    priority=0, eta=None)),
                "return_value": json.dumps({"ok": True}) if status == tables.SUCCESSFUL else None,
                "error_type": "TimeoutError" if failed else None,
                "error_message": "upstream did not answer in 30 s" if failed else None,
                "traceback": "Traceback (most recent call last):\n  File \"app/jobs.py\", line 41, in run\n"
                "    response = client.post(url, timeout=30)\nTimeoutError: upstream did not answer in 30 s"
                if failed else None,
                "retried": failed and i % 2 == 0,
            }
        )
    with db_engine.connect() as conn, conn.begin():
        conn.execute(insert(tables.result), rows)
        conn.execute(insert(tables.worker), [
            {"id": f"native:web-{i}", "kind": "native", "hostname": f"web-{i}", "pid": 4100 + i,
             "queues": json.dumps(QUEUES[: 2 + i]), "processes": 4, "started_at": now - timedelta(hours=5),
             "heartbeat_at": now - timedelta(minutes=12 if i == 2 else 0)}
            for i in range(3)
        ])
    for i in range(180):
        support.Noop(i).run_in_worker(queue=QUEUES[i % 4], priority=i % 3)
    for i in range(25):
        support.Noop(i).run_in_worker(queue="billing", delay=600 + 97 * i)
    with db_engine.connect() as conn, conn.begin():
        for w in range(2):
            claims_sql.claim(conn, QUEUES, 3, worker_id=f"native:web-{w}", now=now - timedelta(seconds=40 * (w + 1)))
    support.Flaky.failing = True
    support.Flaky("invoice-2041").run_in_worker(queue="invoices")
    support.run_next(queues=("invoices",), worker_id="native:web-0")
    jobtable.configure(schedule=[[support.NOOP, "0 9 * * *"], [support.NOOP, "*/15 * * * *"]])


def main(target: str) -> None:
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/demo.sqlite3"
        migrate.upgrade(db_engine.create_jobtable_engine(url))
        jobtable.configure(database_url=url)
        fill()
        from jobtable.dashboard import create_app

        server = Server(create_app(refresh_seconds=0, title="jobtable"))
        try:
            for context in launch_browser():
                page = context.new_page()
                with db_engine.connect() as conn, conn.begin():
                    from sqlalchemy import select

                    failed = conn.execute(
                        select(tables.result.c.id).where(tables.result.c.task_name == support.FLAKY)
                    ).scalar_one()
                for name, path in [
                    ("overview", "/"), ("requests", "/requests"), ("scheduled", "/requests?state=scheduled"),
                    ("processes", "/processes"), ("results", "/results?status=ERRORED"),
                    ("result-detail", f"/results/{failed}"), ("workers", "/workers"), ("schedules", "/schedules"),
                ]:
                    page.goto(server.url + path)
                    page.screenshot(path=str(out / f"{name}.png"), full_page=name != "requests")
                page.goto(server.url + f"/results/{failed}")
                page.get_by_role("button", name="Retry").click()
                page.screenshot(path=str(out / "confirm.png"))
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard")
