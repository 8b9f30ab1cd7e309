"""SQL of the result side: reading a job's state, and the Celery result backend's
writes (results, groups, chord counters)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Row

from . import dialects, tables

request = tables.request
result = tables.result
group = tables.group


@dataclass(frozen=True)
class JobState:
    """What the database knows of one task id: its newest finished attempt
    and, if it is waiting or running again, that request."""

    result: Row[Any] | None
    active: Row[Any] | None


def job_state(conn: Connection, task_id: str) -> JobState:
    newest = conn.execute(
        select(result).where(result.c.task_id == task_id).order_by(result.c.attempt.desc()).limit(1)
    ).first()
    active = conn.execute(
        select(request).where(request.c.task_id == task_id).order_by(request.c.attempt.desc()).limit(1)
    ).first()
    return JobState(newest, active)


def upsert_result(
    conn: Connection, values: dict[str, Any], *, only_new: bool = False, only_unfinished: bool = False
) -> None:
    """Write the result of (task_id, attempt); a SUCCESSFUL one is never
    overwritten (a redelivered duplicate must not turn success into failure).
    ``only_new``: write nothing if the attempt already has a row.
    ``only_unfinished``: replace only a STARTED row (a custom state written
    by ``update_state`` while the task runs never replaces its final state)."""
    stmt = dialects.upsert_insert(conn, result).values(values)
    if only_new:
        conn.execute(stmt.on_conflict_do_nothing())
        return
    changed = {k: stmt.excluded[k] for k in values if k not in ("task_id", "attempt")}
    # Keep the start time a STARTED row recorded.
    changed["started_at"] = func.coalesce(stmt.excluded.started_at, result.c.started_at)
    stmt = stmt.on_conflict_do_update(
        index_elements=[result.c.task_id, result.c.attempt],
        set_=changed,
        where=result.c.status == "STARTED" if only_unfinished else result.c.status != tables.SUCCESSFUL,
    )
    conn.execute(stmt)


def forget(conn: Connection, task_id: str) -> None:
    conn.execute(delete(result).where(result.c.task_id == task_id))


def delete_results_before(conn: Connection, before: datetime, batch: int = 1000) -> int:
    ids = select(result.c.id).where(result.c.ended_at < before).limit(batch)
    return conn.execute(delete(result).where(dialects.dialect_of(conn).in_limited(conn, result.c.id, ids))).rowcount


# -- groups and chords ---------------------------------------------------------------


def save_group(conn: Connection, group_id: str, encoded: str, now: datetime) -> None:
    stmt = dialects.upsert_insert(conn, group).values(id=group_id, result=encoded, created_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=[group.c.id], set_={"result": stmt.excluded.result}))


def load_group(conn: Connection, group_id: str) -> str | None:
    return conn.execute(select(group.c.result).where(group.c.id == group_id)).scalar()


def delete_group(conn: Connection, group_id: str) -> None:
    conn.execute(delete(group).where(group.c.id == group_id))


def start_chord(conn: Connection, group_id: str, encoded: str, now: datetime) -> None:
    """(Re)start a chord before its header is sent: a frozen chord applied
    again is a new run.  Its size is not known yet (``set_chord_size``)."""
    stmt = dialects.upsert_insert(conn, group).values(
        id=group_id, result=encoded, chord_size=None, chord_done=0, created_at=now
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[group.c.id],
            set_={"result": stmt.excluded.result, "chord_size": None, "chord_done": 0, "created_at": now},
        )
    )


def set_chord_size(conn: Connection, group_id: str, size: int) -> None:
    """Celery calls this before sending the header's last task, so the part
    that completes the count always sees the size (parts may already have
    finished: the count is not reset here)."""
    conn.execute(update(group).where(group.c.id == group_id).values(chord_size=size))


def chord_part_done(conn: Connection, group_id: str) -> tuple[int, int | None] | None:
    """Count one finished part; returns (parts done, chord size).

    One UPDATE ... RETURNING (``Dialect.update_returning``): exactly one
    caller sees ``done == size``, so exactly one calls the chord's body.
    """
    rows = dialects.dialect_of(conn).update_returning(
        conn,
        group,
        [group.c.id == group_id],
        {"chord_done": group.c.chord_done + 1},
        [group.c.chord_done, group.c.chord_size],
    )
    return (int(rows[0].chord_done), rows[0].chord_size) if rows else None


def delete_groups_before(conn: Connection, before: datetime) -> int:
    return conn.execute(delete(group).where(group.c.created_at < before)).rowcount



# -- shim ------------------------------------------------------------------------------
# SQL of the Celery-free API (jobtable/shim/).  A chord's parts are counted in
# its jobtable_group row like the Celery backend's; in addition each part
# stores its return value in a row of its own (id "<group id>#<index>"), in
# the transaction that counts it.  The worker writes results in batches after
# run() returns, so the part that completes the count cannot read its
# siblings' (or its own) results from jobtable_result yet -- but it can read
# these rows.  A part row is inserted once per index, so a part that runs
# again (rescued after a crash) is not counted twice.


def _part_id(group_id: str, index: int) -> str:
    return f"{group_id}#{index:010d}"


def chord_part_record(
    conn: Connection, group_id: str, index: int, encoded: str, now: datetime
) -> tuple[int, int | None] | None:
    """Store part ``index``'s outcome (JSON) and count it once.

    Returns (parts done, chord size) when this call counted the part; None
    when the part was counted before, or the chord is unknown.
    """
    values = {"id": _part_id(group_id, index), "result": encoded, "chord_done": 0, "created_at": now}
    if not dialects.dialect_of(conn).insert_new(conn, group, values):
        return None
    return chord_part_done(conn, group_id)


def chord_part_outcomes(conn: Connection, group_id: str) -> list[str]:
    """The stored outcomes of a chord's parts, in part order."""
    # A range instead of LIKE: no escaping of % and _ in group ids ("$" follows "#").
    stmt = (
        select(group.c.result)
        .where(group.c.id > f"{group_id}#", group.c.id < f"{group_id}$")
        .order_by(group.c.id)
    )
    return [row.result for row in conn.execute(stmt)]


def delete_chord_parts(conn: Connection, group_id: str) -> None:
    conn.execute(delete(group).where(group.c.id > f"{group_id}#", group.c.id < f"{group_id}$"))


def task_ids_known(conn: Connection, task_ids: list[str]) -> set[str]:
    """Those of ``task_ids`` that have a request or a result: a canvas step
    sent again (its sender re-ran after a crash) is not enqueued twice."""
    if not task_ids:
        return set()
    found = set(conn.execute(select(request.c.task_id).where(request.c.task_id.in_(task_ids))).scalars())
    found |= set(conn.execute(select(result.c.task_id).where(result.c.task_id.in_(task_ids))).scalars())
    return found


def delete_unfinished(conn: Connection, task_id: str, attempt: int) -> None:
    """Remove the STARTED row of (task_id, attempt) -- a custom state the
    shim's ``update_state`` wrote -- before the worker writes the attempt's
    final row, which would otherwise repeat (task_id, attempt) and be skipped."""
    conn.execute(
        delete(result).where(result.c.task_id == task_id, result.c.attempt == attempt, result.c.status == "STARTED")
    )


def grow_chord(conn: Connection, group_id: str) -> int | None:
    """One more part for a running chord (the shim's ``add_to_chord``):
    returns the new size, or None if the chord is unknown or not sized yet.
    The adding part has not been counted yet (it is still running), so the
    count cannot complete before the new part is counted too."""
    rows = dialects.dialect_of(conn).update_returning(
        conn,
        group,
        [group.c.id == group_id, group.c.chord_size.is_not(None)],
        {"chord_size": group.c.chord_size + 1},
        [group.c.chord_size],
    )
    return int(rows[0].chord_size) if rows else None


def attempts_known(conn: Connection, pairs: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those (task_id, attempt) of ``pairs`` that have a request or a result:
    the dedupe of a canvas step that continues a replaced task (the shim's
    ``replace()``: the same task id, a later attempt)."""
    found: set[tuple[str, int]] = set()
    for task_id, attempt in pairs:
        for table in (request, result):
            hit = conn.execute(
                select(table.c.id).where(table.c.task_id == task_id, table.c.attempt == attempt).limit(1)
            ).first()
            if hit is not None:
                found.add((task_id, attempt))
                break
    return found
