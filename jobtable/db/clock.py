"""The clock of every time jobtable stores: aware UTC datetimes, always
passed to SQL as bound parameters (``types.UTCDateTime`` stores them alike
on both dialects)."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
