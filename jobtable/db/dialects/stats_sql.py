"""SQL fragments both dialects' result-stats triggers use.

jobtable_result_stats is kept by triggers on jobtable_result, so that every
writer is covered without its cooperation.  Every trigger runs one upsert
over "delta" rows: sign +1 for a row that now exists, -1 for one that no
longer does, added into the counters of (span, bucket, queue, status, shard).
"""

from __future__ import annotations

from .. import tables
from .base import STATS_TABLE

#: The jobtable_result columns a stats row is computed from.
SOURCE_COLUMNS = "queue, status, ended_at, retried, requested_at, started_at"
#: The statements of jobtable_result that have a stats trigger.
OPS = ("insert", "update", "delete")


def wait_class(wait: str) -> str:
    """The wait class (index into the wait columns) of the wait ``wait``."""
    classes = " ".join(f"WHEN {wait} < {edge!r} THEN {i}" for i, edge in enumerate(tables.WAIT_EDGES))
    return f"CASE WHEN {wait} IS NULL THEN NULL {classes} ELSE {len(tables.WAIT_EDGES)} END"


def on_conflict() -> str:
    """Adds an upsert's counters into the row that exists."""
    counters = tables.STATS_COUNTERS
    return (
        "ON CONFLICT (span, bucket_start, queue, status, shard) DO UPDATE SET\n    "
        + ", ".join(f"{c} = {STATS_TABLE}.{c} + excluded.{c}" for c in counters)
    )
