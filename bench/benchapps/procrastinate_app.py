"""The Procrastinate app; ``python -m benchapps.procrastinate_app`` runs one
worker process (asyncio; the benchmark runs two)."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from .record import record

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PG_DSN", "")))


@app.task(name="noop", queue="bench")
async def noop() -> None:
    pass


@app.task(name="stamp", queue="bench")
async def stamp(sent: float) -> None:
    record(sent)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    # concurrency: jobs one process runs at once (async no-ops); the fetches
    # of several slots overlap, as they would in production.
    concurrency = int(os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY", "10"))
    app.run_worker(queues=["bench"], concurrency=concurrency, install_signal_handlers=True)
