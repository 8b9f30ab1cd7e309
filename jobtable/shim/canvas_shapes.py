"""The shapes of canvas members, as Celery 5.7 unrolls them: a group inside
a group or chord header, an empty chain, and the nesting depth limit.

Signatures are read by their ``subtask_type`` ("group", "chain", "chord",
None for a task) and ``kwargs`` (a group's ``tasks``, a chain's ``tasks``, a
chord's ``header`` and ``body``), so this module needs no canvas class.

Celery flattens a group inside a group in two orders:

- when the outer group is *frozen* (``group._freeze_unroll``: a chord
  header, or a group that is a chain step), through a deque whose
  ``extendleft`` reverses each inner group's members:
  ``chord([a, group(b, c, d), e], body)`` gives the body ``[a, d, c, b, e]``
  (compat_tests/test_parity.py checks it of a real Celery worker);
- when it is applied without freezing (``group._prepared``: a group sent on
  its own, every eager canvas), in order: ``[a, b, c, d, e]``.

The shim does the same (``unrolled`` and ``in_order``).  Both drop an empty
chain, which contributes no task (Celery issue #9772).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from .exceptions import NotSupported

#: Canvas levels (a chain, group or chord inside another) that a canvas may
#: nest.  Deeper canvases are refused when built: their messages nest each
#: level's JSON several times over (limits.MAX_DEPTH is 100 JSON levels).
MAX_CANVAS_DEPTH = 24


def _empty_chain(sig: Any) -> bool:
    return bool(sig.get("subtask_type") == "chain" and not sig["kwargs"].get("tasks"))


def _members(sig: Any) -> list[Any]:
    return list(sig["kwargs"].get("tasks") or [])


def in_order(members: Iterable[Any]) -> list[Any]:
    """Groups flattened in order (Celery's ``_prepared``), empty chains dropped."""
    flat: list[Any] = []
    stack = [iter(members)]
    while stack:
        for sig in stack[-1]:
            if sig.get("subtask_type") == "group":
                stack.append(iter(_members(sig)))
                break
            if not _empty_chain(sig):
                flat.append(sig)
        else:
            stack.pop()
    return flat


def unrolled(members: Iterable[Any]) -> list[Any]:
    """Groups flattened as Celery freezes a group (``_freeze_unroll``): an
    inner group's members go to the front of the queue through
    ``extendleft``, so they come out reversed.  Empty chains dropped."""
    queue = deque(members)
    flat: list[Any] = []
    while queue:
        sig = queue.popleft()
        if sig.get("subtask_type") == "group":
            queue.extendleft(_members(sig))
        elif not _empty_chain(sig):
            flat.append(sig)
    return flat


def depth(sig: Any) -> int:
    """How many canvas levels ``sig`` nests (0 for a task); the canvas
    classes keep each one's depth in ``_depth`` when built, so this reads
    one level."""
    kind = sig.get("subtask_type")
    if kind is None:
        return 0
    known = getattr(sig, "_depth", None)
    if known is not None:
        return int(known)
    kwargs = sig["kwargs"]
    children = list(kwargs.get("tasks") or kwargs.get("header") or [])
    if kwargs.get("body") is not None:
        children.append(kwargs["body"])
    return 1 + max((depth(child) for child in children), default=0)


def checked_depth(kind: str, children: Iterable[Any]) -> int:
    """The depth of a new ``kind`` over ``children``; refused past the limit."""
    level = 1 + max((depth(child) for child in children if child is not None), default=0)
    if level > MAX_CANVAS_DEPTH:
        raise NotSupported(
            f"a canvas nested {level} levels deep (this {kind} and what it holds; the limit is "
            f"jobtable.shim.canvas_shapes.MAX_CANVAS_DEPTH = {MAX_CANVAS_DEPTH})",
            "Flatten it: chain the steps in one chain, group the tasks in one group, or send the inner "
            "canvas from a task.",
        )
    return level


def check_header_member(sig: Any, where: str) -> None:
    """A chord header member (or a member of a group that follows a chain
    step): a task, or a chain of tasks whose last step counts the chord."""
    kind = sig.get("subtask_type")
    if kind is None:
        return
    if kind == "chain":
        for step in sig["kwargs"].get("tasks") or []:
            if step.get("subtask_type") is not None:
                raise NotSupported(
                    f"a chain holding a {step['subtask_type']} {where}",
                    "Chains in a chord header (or in a group after a chain step) are chains of task "
                    "signatures; send the inner group or chord from a task.",
                )
        return
    raise NotSupported(
        f"a {kind} {where}",
        "Use task signatures, chains of them, or groups of those; send a chord on its own or from a task.",
    )
