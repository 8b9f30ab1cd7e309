"""SQL of the Celery result backend's chords, counted like Celery's Redis
backend counts them: each finished header part is recorded once (its task id,
state and result, keyed by its place in the header), the count of the chord's
``jobtable_group`` row moves in the same statement, and the part that
completes it reads every part's outcome in header order.

A part row's id is ``<group id>#<index>#<task id>`` (the index zero-padded,
so ids sort in header order): a task added with ``add_to_chord`` shares its
adder's index, and a replaced task (``Task.replace``) keeps its id and index,
so it is counted once.  ``chord_done`` counts finished parts minus added
ones: the chord is complete when it equals ``chord_size`` -- Redis's
``readycount == size + totaldiff`` -- and ``set_chord_size``, which Celery
may call after early parts have finished or added, never resets it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from . import dialects, tables

group = tables.group

#: Celery's group_index is None for a task that is not in a header's list
#: (Redis scores it +inf): it sorts last.
LAST_INDEX = 9_999_999_999


def _part_id(group_id: str, index: int | None, task_id: str) -> str:
    place = LAST_INDEX if index is None else min(max(int(index), 0), LAST_INDEX)
    # Task ids are Celery's to choose: a long one is hashed so the id fits the
    # column (255) and stays unique.
    tid = task_id if len(task_id) <= 64 else hashlib.blake2b(task_id.encode(), digest_size=20).hexdigest()
    return f"{group_id}#{place:010d}#{tid}"


def _range(group_id: str) -> Any:
    # A range instead of LIKE: no escaping of % and _ in group ids ("$" follows "#").
    return (group.c.id > f"{group_id}#", group.c.id < f"{group_id}$")


def record_part(
    conn: Connection, group_id: str, index: int | None, task_id: str, encoded: str, now: datetime
) -> tuple[int, int | None] | None:
    """Record one finished part and count it; returns (count, chord size).

    None when this part was recorded before (a redelivered duplicate, or a
    failure propagated to it twice) or the chord is unknown (finished and
    cleaned up, or never started): such a call never completes a chord.
    """
    dialect = dialects.dialect_of(conn)
    part_id = _part_id(group_id, index, task_id)
    if not dialect.insert_new(conn, group, {"id": part_id, "result": encoded, "chord_done": 0, "created_at": now}):
        return None
    # One UPDATE ... RETURNING: exactly one part sees the count complete.
    rows = dialect.update_returning(
        conn,
        group,
        [group.c.id == group_id],
        {"chord_done": group.c.chord_done + 1},
        [group.c.chord_done, group.c.chord_size],
    )
    if not rows:
        conn.execute(delete(group).where(group.c.id == part_id))  # no chord: no orphan part row
        return None
    return int(rows[0].chord_done), rows[0].chord_size


def add_part(conn: Connection, group_id: str) -> bool:
    """``Task.add_to_chord``: the chord waits for one more part.  Returns
    whether the chord exists."""
    changed = conn.execute(
        update(group).where(group.c.id == group_id).values(chord_done=group.c.chord_done - 1)
    ).rowcount
    return bool(changed)


def parts(conn: Connection, group_id: str) -> list[str]:
    """The recorded parts' outcomes (as encoded by the backend), in header order."""
    return [row.result for row in conn.execute(select(group.c.result).where(*_range(group_id)).order_by(group.c.id))]


def delete_parts(conn: Connection, group_id: str) -> None:
    conn.execute(delete(group).where(*_range(group_id)))
