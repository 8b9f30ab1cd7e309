"""The request rows that start a canvas step, from its JSON form (what
messages carry): a task, a chain (its first task, the rest in the message),
a group (one row per member, with the group id) or a chord (its header's
rows, carrying the body; the chord's counter row is created with them).

Groups and chords appear as steps when a chain continues with them
(``chain(a, group(b, c))``, ``chain(a, group(b, c), d)``: Celery makes the
latter ``a | chord([b, c], d)``); the step before sends them (followups.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import messages, params
from ..db import results as db_results
from . import send
from .current import App
from .exceptions import NotSupported

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class ChordStart:
    """A chord whose header rows are about to be inserted: its counter row
    must exist, sized, in the same transaction (``start_chords``)."""

    group_id: str
    size: int
    encoded: str


def first_task(sig: dict[str, Any]) -> dict[str, Any]:
    if sig.get("subtask_type") == "chain":
        return first_task(sig["kwargs"]["tasks"][0])
    return sig


def result_task(sig: dict[str, Any]) -> dict[str, Any]:
    """The step whose id stands for ``sig``'s result (a chain's last; a chord's body's)."""
    if sig.get("subtask_type") == "chain":
        return result_task(sig["kwargs"]["tasks"][-1])
    if sig.get("subtask_type") == "chord":
        return result_task(sig["kwargs"]["body"])
    return sig


def _header_members(sig: dict[str, Any]) -> list[dict[str, Any]]:
    header = sig["kwargs"]["header"]
    if isinstance(header, dict):  # Celery's form: the header is a group's dict
        return list(header.get("kwargs", {}).get("tasks") or [])
    return list(header or [])


def member_step(step: dict[str, Any], group_id: str, group_index: int | None, chord: dict[str, Any] | None) -> dict[str, Any]:
    """The last step of a chain in a group or chord header, as Celery freezes
    it: its options name the group, its place and (in a chord) the body."""
    if step.get("subtask_type") is not None:
        raise NotSupported(
            f"a chain that ends with a {step['subtask_type']} inside a group or chord header",
            "End a header chain with a task signature; send the inner group or chord from that task.",
        )
    options = dict(step.get("options") or {})
    options["group_id"] = group_id
    if group_index is not None:
        options["group_index"] = group_index
    if chord is not None:
        options["chord"] = chord
    return {**step, "options": options}


def start_chords(conn: Connection, starts: list[ChordStart], now: datetime) -> None:
    """Create the counter row of each chord about to be sent, unless it
    exists (the step that sends it ran twice: its parts may be counted)."""
    for start in starts:
        if db_results.load_group(conn, start.group_id) is not None:
            continue
        db_results.start_chord(conn, start.group_id, start.encoded, now)
        db_results.set_chord_size(conn, start.group_id, start.size)


def rows_for(
    app: App,
    sig: dict[str, Any],
    prefix: list[Any],
    *,
    now: datetime,
    parent_id: str | None = None,
    root_id: str | None = None,
    chain: list[dict[str, Any]] | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    chord: dict[str, Any] | None = None,
    chord_starts: list[ChordStart] | None = None,
) -> list[dict[str, Any]]:
    """The request row(s) that start ``sig`` (a signature's JSON form), with
    ``prefix`` (encoded values) before its arguments.  ``chain``: steps to
    run after it, reversed, as in Celery's messages.  ``chord_starts``
    collects the chords to create with the rows (a chord step)."""
    kind = sig.get("subtask_type")
    if kind == "chain":
        steps = list(sig["kwargs"]["tasks"])
        if not steps:
            return []
        if group_id is not None and len(steps) > 1:
            # A chain that is a member of a group or chord header: as Celery
            # (prepare_steps), its LAST step carries the group, its place and
            # the chord (in its options), so only that step counts the chord;
            # the earlier steps run as a plain chain.
            steps[-1] = member_step(steps[-1], group_id, group_index, chord)
            group_id = group_index = chord = None
        # The outer chain's remaining steps run after this chain's.
        rest = list(chain or []) + list(reversed(steps[1:]))
        return rows_for(
            app,
            steps[0],
            prefix,
            now=now,
            parent_id=parent_id,
            root_id=root_id,
            chain=rest,
            group_id=group_id,
            group_index=group_index,
            chord=chord,
            chord_starts=chord_starts,
        )
    if kind in ("group", "chord"):
        return _fan_out(app, sig, prefix, now, parent_id, root_id, chain, group_id, chord, chord_starts)
    if kind is not None:
        raise NotSupported(f"a {kind} as a canvas step", "Chain plain tasks; use chord(header, body) for fan-in.")
    raw_options = dict(sig.get("options") or {})
    # A chain step that ends a chord header member carries its chord in its
    # options (Celery's form, member_step): it goes to the message's embed.
    carried = raw_options.pop("chord", None)
    if chord is None and isinstance(carried, dict):
        chord = carried
    options = params.decode(raw_options)
    for key, value in (
        ("parent_id", parent_id),
        ("root_id", root_id),
        ("group_id", group_id),
        ("group_index", group_index),
    ):
        if value is not None:
            options[key] = value
    args = list(sig.get("args") or [])
    if not sig.get("immutable"):
        args = list(prefix) + args
    embed = {"chain": list(chain) if chain else None, "chord": chord}
    return [send.build_row(app, str(sig["task"]), args, dict(sig.get("kwargs") or {}), options, now=now, embed=embed)]


def _fan_out(
    app: App,
    sig: dict[str, Any],
    prefix: list[Any],
    now: datetime,
    parent_id: str | None,
    root_id: str | None,
    chain: list[dict[str, Any]] | None,
    outer_group: str | None,
    outer_chord: dict[str, Any] | None,
    chord_starts: list[ChordStart] | None,
) -> list[dict[str, Any]]:
    """A group or chord step: every member gets ``prefix`` (the previous
    step's value), as in Celery."""
    kind = sig["subtask_type"]
    if outer_group is not None or outer_chord is not None:
        raise NotSupported(f"a {kind} inside a group or chord", "Send it on its own, or flatten it into one group.")
    group_id = str((sig.get("options") or {}).get("task_id") or messages.new_task_id())
    if kind == "group":
        if chain:
            # chain() makes "group, then more steps" a chord: only a message
            # built elsewhere can ask for this.
            raise NotSupported("steps after a group in a chain", "End the chain with the group, or make it a chord.")
        members, body = list(sig["kwargs"].get("tasks") or []), None
    else:
        members, body = _header_members(sig), dict(sig["kwargs"]["body"])
        if chain:
            # The chain's remaining steps run after the body.
            body = {
                "task": "celery.chain",
                "args": [],
                "kwargs": {"tasks": [body, *reversed(chain)]},
                "options": {},
                "subtask_type": "chain",
                "immutable": False,
                "chord_size": None,
            }
    # As Celery (group._freeze_unroll): an empty chain is no member.
    members = [m for m in members if not (m.get("subtask_type") == "chain" and not m["kwargs"].get("tasks"))]
    if body is not None and not members:
        # Celery calls the body at once with an empty list.
        return rows_for(app, body, [[]], now=now, parent_id=parent_id, root_id=root_id, chord_starts=chord_starts)
    rows: list[dict[str, Any]] = []
    for index, member in enumerate(members):
        if member.get("subtask_type") not in (None, "chain"):
            raise NotSupported(
                f"a {member['subtask_type']} as a member of a {kind} in a chain",
                "Put task signatures or chains of them in a group that follows a chain step.",
            )
        rows += rows_for(
            app,
            member,
            prefix,
            now=now,
            parent_id=parent_id,
            root_id=root_id,
            group_id=group_id,
            group_index=index,
            chord=body,
        )
    if body is not None:
        if chord_starts is None:
            raise NotSupported("a chord sent this way", "Send chord(header, body) with apply_async().")
        # One row per member (a chain's first step); a chain's result is its last step's.
        ids = [
            (result_task(member).get("options") or {}).get("task_id") if member.get("subtask_type") else row["task_id"]
            for member, row in zip(members, rows)
        ]
        tuple_ = [[group_id, None], [[[task_id, None], None] for task_id in ids]]
        chord_starts.append(ChordStart(group_id, len(members), json.dumps({"result": tuple_})))
    return rows
