"""pgqueuer: asyncio, PostgreSQL only; two ``pgqueuer_worker`` processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import psycopg

import harness
from systems.base import System

DB = "bench_pgqueuer"


class Pgqueuer(System):
    name = "pgqueuer"
    backends = ("postgresql",)
    pg_database = DB

    def __init__(self, backend: str, tmpdir: Path) -> None:
        super().__init__(backend, tmpdir)
        # One event loop and one async connection for the harness's enqueues:
        # a loop per call would cost more than the enqueue itself.
        self.loop = asyncio.new_event_loop()
        self.aconn: Any = None
        self.conn: Any = None

    def fresh(self) -> None:
        from pgqueuer import PsycopgDriver, Queries

        self.close()
        harness.create_pg_database(DB)
        self.conn = psycopg.connect(harness.pg_conninfo(DB), autocommit=True)

        async def setup() -> Any:
            self.aconn = await psycopg.AsyncConnection.connect(harness.pg_conninfo(DB), autocommit=True)
            queries = Queries(PsycopgDriver(self.aconn))
            await queries.install()
            return queries

        self.queries = self.loop.run_until_complete(setup())

    def close(self) -> None:
        if self.aconn is not None:
            self.loop.run_until_complete(self.aconn.close())
            self.aconn = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def cleanup(self) -> None:
        self.close()
        harness.drop_pg_database(DB)

    def enqueue_single(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.queries.enqueue("noop", None)

        self.loop.run_until_complete(go())

    def enqueue_bulk(self, n: int, batch: int = 10_000) -> None:
        async def go() -> None:
            for start in range(0, n, batch):
                size = min(batch, n - start)
                await self.queries.enqueue(["noop"] * size, [None] * size, [0] * size)

        self.loop.run_until_complete(go())

    def send_stamp(self, sent: float) -> None:
        self.loop.run_until_complete(self.queries.enqueue("stamp", repr(sent).encode()))

    def worker_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "benchapps.pgqueuer_worker"] for _ in range(2)]

    def worker_env(self, latency_file: Path | None = None) -> dict[str, str]:
        env = super().worker_env(latency_file)
        env["BENCH_PG_DSN"] = harness.pg_conninfo(DB)
        return env

    def remaining(self) -> int:
        # pgqueuer deletes a job from its queue table when it logs the job done.
        return int(self.conn.execute("SELECT count(*) FROM pgqueuer").fetchone()[0])


class PgqueuerAsyncpg(Pgqueuer):
    """pgqueuer with its asyncpg driver for the harness's enqueues (the
    fastest way pgqueuer offers to enqueue; issue 13 measures against it).
    The workers are the same as ``pgqueuer``'s."""

    name = "pgqueuer-asyncpg"

    def fresh(self) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.close()
        harness.create_pg_database(DB)
        self.conn = psycopg.connect(harness.pg_conninfo(DB), autocommit=True)

        async def setup() -> Any:
            self.aconn = await asyncpg.connect(
                host=harness.PG_HOST, port=harness.PG_PORT, user=harness.PG_USER, database=DB
            )
            queries = Queries(AsyncpgDriver(self.aconn))
            await queries.install()
            return queries

        self.queries = self.loop.run_until_complete(setup())
