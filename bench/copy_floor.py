"""The floor of the bulk enqueue's statement shapes, prebuilt rows on bare
psycopg (issue 13, step 3): what PostgreSQL itself takes per row for
jobtable's row shape, without any of jobtable's Python.

    bench/.venv/bin/python bench/copy_floor.py [-n 100000] [--batch 10000] [--repeat 3]

Shapes, each into a freshly migrated ``jobtable_request`` (all indexes), one
commit per batch, taking turns in rounds:

- ``unnest``: ``INSERT ... SELECT FROM unnest(task_ids, messages) ... ON
  CONFLICT DO NOTHING RETURNING`` with the constant columns as scalars
  (jobtable's INSERT);
- ``copy``: ids from the sequence, then binary COPY (jobtable's COPY path);
- ``copy+temp``: binary COPY into a temporary table, then ``INSERT ... SELECT
  ... ON CONFLICT DO NOTHING RETURNING`` from it (what keyed batches would
  need to keep their ON CONFLICT).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import psycopg

import harness

DB = "bench_copyfloor"
COLUMNS = ("task_id", "task_name", "queue", "priority", "state", "run_at", "expires_at", "concurrency_key",
           "attempt", "retries", "created_at", "message", "unique_key")
TYPES = ("varchar", "varchar", "varchar", "int2", "varchar", "timestamptz", "timestamptz", "varchar",
         "int4", "int4", "timestamptz", "text", "varchar")


def message(task_id: str) -> str:
    # jobtable's envelope of a no-op job is ~760 bytes.
    return ('{"body":"W1tdLHt9LHsiY2FsbGJhY2tzIjpudWxsfV0=","content-encoding":"utf-8","content-type":'
            '"application/json","headers":{"lang":"py","task":"benchapps.jobtable_jobs.Noop","id":"%s",'
            '"shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,'
            '"timelimit":[null,null],"root_id":"%s","parent_id":null,"argsrepr":"()","kwargsrepr":"{}",'
            '"origin":"bench","ignore_result":false,"replaced_task_nesting":0,"stamped_headers":null,'
            '"stamps":{},"jobtable_retries":0},"properties":{"correlation_id":"%s","reply_to":"",'
            '"delivery_mode":2,"delivery_info":{"exchange":"","routing_key":"bench"},"priority":0,'
            '"body_encoding":"base64","delivery_tag":"%s"}}' % (task_id, task_id, task_id, task_id))


def rows(n: int) -> list[tuple[Any, ...]]:
    now = datetime.now(timezone.utc)
    out = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        out.append((task_id, "noop", "bench", 0, "pending", now, None, None, 1, 0, now, message(task_id), None))
    return out


UNNEST = (
    "WITH ins AS (INSERT INTO jobtable_request (task_id, task_name, queue, priority, state, run_at, attempt, "
    "retries, created_at, message) SELECT u.t, %(name)s, %(queue)s, 0, 'pending', %(now)s, 1, 0, %(now)s, u.m "
    "FROM unnest(%(ids)b::varchar[], %(messages)b::text[]) AS u(t, m) ON CONFLICT DO NOTHING "
    "RETURNING id, task_id, queue) SELECT ins.id, ins.task_id FROM ins"
)
IDS = ("SELECT nextval((SELECT pg_get_serial_sequence('jobtable_request', 'id'))::regclass) "
       "FROM generate_series(1, %s)")
COPY = f"COPY jobtable_request (id, {', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
TEMP = ("CREATE TEMP TABLE IF NOT EXISTS load (ord int4, "
        + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, TYPES)) + ") ON COMMIT DELETE ROWS")
COPY_TEMP = f"COPY load (ord, {', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
FROM_TEMP = (
    f"WITH src AS (DELETE FROM load RETURNING *), ins AS (INSERT INTO jobtable_request ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM src ORDER BY ord ON CONFLICT DO NOTHING RETURNING id, task_id) "
    "SELECT id, task_id FROM ins"
)


def run(shape: str, conn: psycopg.Connection[Any], batch: list[tuple[Any, ...]]) -> int:
    with conn.transaction():
        cur = conn.cursor()
        if shape == "unnest":
            now = batch[0][5]
            got = cur.execute(UNNEST, {"name": "noop", "queue": "bench", "now": now,
                                       "ids": [r[0] for r in batch], "messages": [r[11] for r in batch]}).fetchall()
            return len(got)
        if shape == "copy":
            ids = sorted(r[0] for r in cur.execute(IDS, (len(batch),)).fetchall())
            with cur.copy(COPY) as copy:
                copy.set_types(["int8", *TYPES])
                for row_id, row in zip(ids, batch):
                    copy.write_row((row_id, *row))
            return len(ids)
        cur.execute(TEMP)
        with cur.copy(COPY_TEMP) as copy:
            copy.set_types(["int4", *TYPES])
            for i, row in enumerate(batch):
                copy.write_row((i, *row))
        return len(cur.execute(FROM_TEMP).fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import jobtable
    from jobtable.db import engine as db_engine
    from jobtable.db.migrate import upgrade

    print("load %.2f %.2f %.2f" % os.getloadavg())
    got: dict[str, list[tuple[float, float]]] = {"unnest": [], "copy": [], "copy+temp": []}
    try:
        for _ in range(args.repeat):
            for shape in got:
                harness.create_pg_database(DB)
                jobtable.configure(database_url=harness.pg_url(DB))
                upgrade(db_engine.get_engine())
                db_engine.reset_engines()
                data = rows(args.n)
                with psycopg.connect(harness.pg_conninfo(DB)) as conn:
                    run(shape, conn, data[:100])  # warm up
                    t0, c0 = time.perf_counter(), time.process_time()
                    for start in range(0, args.n, args.batch):
                        assert run(shape, conn, data[start:start + args.batch]) == len(data[start:start + args.batch])
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
                got[shape].append((args.n / elapsed, cpu / args.n * 1e6))
                print(f"  {shape}: {args.n / elapsed:,.0f} rows/s, {cpu / args.n * 1e6:.2f} µs client/row, "
                      "load %.2f" % os.getloadavg()[0], flush=True)
    finally:
        db_engine.reset_engines()
        harness.drop_pg_database(DB)
    print("\n| statement | rows/s (best) | tries | client µs/row |\n|---|---:|---|---:|")
    for shape, tries in got.items():
        print(f"| {shape} | {max(t[0] for t in tries):,.0f} | {', '.join(f'{t[0]:,.0f}' for t in tries)} | "
              f"{min(t[1] for t in tries):.2f} |")
    print("load %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
