"""Column types that behave the same on PostgreSQL, MySQL and SQLite."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

#: BIGINT on PostgreSQL; INTEGER on SQLite so that it aliases the rowid.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python, whatever the dialect stores.

    SQLite has no time zones: values are stored as naive UTC text, which sorts
    and compares correctly because every value goes through this type.
    MySQL's DATETIME has none either, and no fractions unless asked:
    DATETIME(6), naive UTC (sessions run in UTC, see engine.py).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: jobtable stores aware datetimes only")
        value = value.astimezone(timezone.utc)
        if dialect.name in ("sqlite", "mysql"):
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
