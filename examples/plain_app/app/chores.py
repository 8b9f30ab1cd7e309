"""Routine maintenance (Plain's ``plain.chores``): `jobtable chores run`."""

from __future__ import annotations

from jobtable.chores import register_chore

from .jobs import STATE


@register_chore("app")
def clear_tmp_files() -> str:
    """Delete temporary files of the app."""
    removed = [p for p in STATE.glob("*.tmp")]
    for path in removed:
        path.unlink()
    return f"{len(removed)} temporary files deleted"
