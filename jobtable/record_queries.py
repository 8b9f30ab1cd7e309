"""What ``JobRequest.query``, ``JobProcess.query`` and ``JobResult.query``
share (records.py): immutable filters, newest first, ``count``/``exists``/
``first``, and iteration in keyset pages, each page in a read transaction of
its own unless the query runs ``using(conn)``.  The subclasses (records.py)
say which rows they select and what record a row becomes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql import Select

from .db import engine as db_engine
from .db import reads_sql

#: Rows read per transaction when a query is iterated.
PAGE_SIZE = 500

_T = TypeVar("_T")
_Q = TypeVar("_Q", bound="Query[Any]")


@contextmanager
def reading(engine: Engine | None = None) -> Iterator[Connection]:
    """A read transaction.  On SQLite it is DEFERRED: reading (a ``wait()``
    woken by every commit, a walk through the results) must not take the
    writers' lock that jobtable's own transactions take at BEGIN."""
    with db_engine.connect(engine) as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        with conn.begin():
            yield conn


class QueryAttribute(Generic[_Q]):
    """``JobResult.query`` (as plain's models have): a fresh query each time."""

    def __init__(self, make: Callable[[], _Q]) -> None:
        self._make = make

    def __get__(self, obj: object, owner: type | None = None) -> _Q:
        return self._make()


def _job_name(job_class: str | type) -> str:
    if isinstance(job_class, str):
        return job_class
    name_of = getattr(job_class, "job_name", None)
    if name_of is None:
        raise TypeError(f"job_class={job_class!r}: give a registered job name or a Job class.")
    return str(name_of())


def choices(name: str, value: str | Iterable[str], allowed: tuple[str, ...], *, upper: bool) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    out = tuple(v.upper() if upper and isinstance(v, str) else v for v in values)
    bad = [v for v in out if v not in allowed]
    if bad:
        raise ValueError(f"{name}={bad[0]!r} is not one of {', '.join(allowed)}.")
    return out


class Query(Generic[_T]):
    """Filters, immutable: each ``filter`` returns a new query.  Newest
    first (by row id); runs on ``using(conn)``'s connection, else each read
    in a transaction of its own."""

    _table: ClassVar[Table]

    def __init__(self, filters: dict[str, Any] | None = None, connection: Connection | None = None) -> None:
        self._filters: dict[str, Any] = dict(filters or {})
        self._connection = connection

    # -- building ----------------------------------------------------------------------

    def _with(self: _Q, **filters: Any) -> _Q:
        merged = dict(self._filters)
        merged.update({k: v for k, v in filters.items() if v is not None})
        return type(self)(merged, self._connection)

    def _common(
        self: _Q,
        job_class: str | type | None,
        queue: str | None,
        concurrency_key: str | None,
        uuid: str | None,
    ) -> _Q:
        return self._with(
            task_name=None if job_class is None else _job_name(job_class),
            queue=queue,
            concurrency_key=concurrency_key,
            task_id=uuid,
        )

    def using(self: _Q, connection: Connection) -> _Q:
        """The same query on ``connection`` (its transaction, e.g. inside
        ``should_enqueue`` or the application's own)."""
        return type(self)(self._filters, connection)

    def _select(self) -> Select[Any]:
        raise NotImplementedError

    def _convert(self, row: Row[Any]) -> _T:
        raise NotImplementedError

    # -- reading -----------------------------------------------------------------------

    def _run(self, fn: Callable[[Connection], Any]) -> Any:
        if self._connection is not None:
            return fn(self._connection)
        with reading() as conn:
            return fn(conn)

    def count(self) -> int:
        return int(self._run(lambda conn: reads_sql.count(conn, self._select())))

    def exists(self) -> bool:
        return bool(self._run(lambda conn: reads_sql.exists(conn, self._select())))

    def first(self) -> _T | None:
        """The newest match, or None."""
        page = self.page(limit=1)
        return page[0] if page else None

    def page(self, *, limit: int = PAGE_SIZE, before_id: int | None = None) -> list[_T]:
        """Up to ``limit`` matches, newest first, those with an id below
        ``before_id`` only (pass the last one's id for the next page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit={limit!r}: give a whole number of rows, 1 or more.")
        rows = self._run(
            lambda conn: reads_sql.newest_page(conn, self._select(), self._table, before_id=before_id, limit=limit)
        )
        return [self._convert(row) for row in rows]

    def pages(self, size: int = PAGE_SIZE) -> Iterator[list[_T]]:
        """Every match, newest first, ``size`` at a time; each page is read
        in a transaction of its own (keyset on the id), so a long walk never
        holds one open."""
        before: int | None = None
        while True:
            page = self.page(limit=size, before_id=before)
            if page:
                yield page
            if len(page) < size:
                return
            before = getattr(page[-1], "id")

    def all(self) -> list[_T]:
        return [item for page in self.pages() for item in page]

    def __iter__(self) -> Iterator[_T]:
        for page in self.pages():
            yield from page

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._filters}>"
