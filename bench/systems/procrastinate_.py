"""Procrastinate (psycopg 3): asyncio, PostgreSQL only; two worker processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

import harness
from systems.base import System

DB = "bench_procrastinate"


class Procrastinate(System):
    name = "procrastinate"
    backends = ("postgresql",)
    pg_database = DB

    def __init__(self, backend: str, tmpdir: Path) -> None:
        super().__init__(backend, tmpdir)
        self.loop = asyncio.new_event_loop()
        self.app: Any = None
        self.conn: Any = None

    def fresh(self) -> None:
        self.close()
        harness.create_pg_database(DB)
        self.conn = psycopg.connect(harness.pg_conninfo(DB), autocommit=True)
        # The app reads its DSN at import; the database name never changes.
        os.environ["BENCH_PG_DSN"] = harness.pg_conninfo(DB)
        from benchapps.procrastinate_app import app

        self.app = app
        self.loop.run_until_complete(self.app.open_async())
        self.loop.run_until_complete(self.app.schema_manager.apply_schema_async())
        self.noop = self.app.tasks["noop"]
        self.stamp = self.app.tasks["stamp"]

    def close(self) -> None:
        if self.app is not None:
            self.loop.run_until_complete(self.app.close_async())
            self.app = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def cleanup(self) -> None:
        self.close()
        harness.drop_pg_database(DB)

    def enqueue_single(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.noop.defer_async()

        self.loop.run_until_complete(go())

    def enqueue_bulk(self, n: int, batch: int = 10_000) -> None:
        async def go() -> None:
            for start in range(0, n, batch):
                await self.noop.batch_defer_async(*({} for _ in range(min(batch, n - start))))

        self.loop.run_until_complete(go())

    def send_stamp(self, sent: float) -> None:
        self.loop.run_until_complete(self.stamp.defer_async(sent=sent))

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "benchapps.procrastinate_app"] for _ in range(2)]

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["BENCH_PG_DSN"] = harness.pg_conninfo(DB)
        return env

    def remaining(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')").fetchone()
        return int(row[0])
