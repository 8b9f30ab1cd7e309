"""A pgqueuer worker process: ``python -m benchapps.pgqueuer_worker``.

pgqueuer is asyncio in one process; the benchmark runs two of these for
"2 worker processes".  Defaults (batch size 10) as users get them.
"""

from __future__ import annotations

import asyncio
import os

import psycopg
from pgqueuer import PsycopgDriver, Queries, QueueManager
from pgqueuer.models import Job

from .record import record


async def main() -> None:
    conn = await psycopg.AsyncConnection.connect(os.environ["BENCH_PG_DSN"], autocommit=True)
    qm = QueueManager(Queries(PsycopgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    @qm.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        record(float((job.payload or b"0").decode()))

    await qm.run(batch_size=int(os.environ.get("BENCH_PGQ_BATCH", "10")))


if __name__ == "__main__":
    asyncio.run(main())
