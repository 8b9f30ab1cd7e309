"""``AsyncResult``, ``GroupResult`` and ``EagerResult`` read from jobtable's
tables, with the same state mapping as the Celery result backend
(``states.py``).  ``get()`` waits on LISTEN/NOTIFY (PostgreSQL) or the data
version (SQLite), not on a polling interval."""

from __future__ import annotations

import builtins
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from .. import params
from ..db import engine as db_engine
from ..db import results as db_results
from ..db import cancels_sql, clock, revokes_sql, tables
from ..db.notify import Listener
from . import exceptions as shim_exceptions
from .current import App
from .exceptions import NotSupported, TaskRevokedError, TimeoutError
from .states import ALL_STATES, EXCEPTION_STATES, FAILURE, PROPAGATE_STATES, READY_STATES, REVOKED, SUCCESS, task_meta

#: Longest single wait: bounds the cost of a lost notification.
WAIT_CAP = 5.0


def exception_from(result: Any, state: str) -> BaseException:
    """An exception object from Celery's ``{"exc_type", "exc_module",
    "exc_message"}``.  Classes are looked up in modules already imported
    (never imported because a row says so); others become a stand-in class
    with the same name."""
    if isinstance(result, BaseException):
        return result
    if not isinstance(result, dict):
        return Exception(result)
    name = str(result.get("exc_type") or "Exception")
    module = str(result.get("exc_module") or "builtins")
    message = result.get("exc_message")
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    if state == REVOKED:
        return TaskRevokedError(*args)
    cls: Any = None
    if (module, name) == ("jobtable.worker.errors", "JobTimeout"):
        return shim_exceptions.TimeLimitExceeded(*args)
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module in ("celery.exceptions", shim_exceptions.__name__):
        cls = getattr(shim_exceptions, name, None)
    elif module in sys.modules:
        cls = getattr(sys.modules[module], name, None)
    # Only Exception subclasses: a KeyboardInterrupt or SystemExit raised by a
    # task must not escape the caller's `except Exception`.
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(*args)
        except Exception:
            pass
    stand_in: type[Exception] = type(name, (Exception,), {"__module__": module})
    return stand_in(*args)


class AsyncResult:
    """The state and result of a task id, from the database."""

    def __init__(
        self,
        id: str,  # noqa: A002  (Celery's name)
        backend: Any = None,
        task_name: str | None = None,
        app: App | None = None,
        parent: Any = None,
    ) -> None:
        if backend is not None:
            raise NotSupported("AsyncResult(backend=...)", "Results are read from jobtable's database.")
        self.id = str(id)
        self.task_name = task_name
        self.app = app
        self.parent = parent

    # -- reading ---------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        with db_engine.connect() as conn, conn.begin():
            found = db_results.job_state(conn, self.id)
        return task_meta(self.id, found)

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def state(self) -> str:
        return str(self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception of a failed task."""
        meta = self._meta()
        if meta["status"] in EXCEPTION_STATES:
            return exception_from(meta["result"], meta["status"])
        if meta["status"] not in ALL_STATES:
            # A custom state's meta (update_state), stored with jobtable's markers.
            return params.decode(meta["result"])
        return meta["result"]

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    @property
    def date_done(self) -> Any:
        return self._meta().get("date_done")

    @property
    def name(self) -> str | None:
        return self._meta().get("name") or self.task_name

    @property
    def retries(self) -> int | None:
        return self._meta().get("retries")

    @property
    def queue(self) -> str | None:
        return self._meta().get("queue")

    @property
    def worker(self) -> str | None:
        return self._meta().get("worker")

    @property
    def children(self) -> list[Any]:
        return []

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    # -- waiting ----------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Wait for the task to finish and return its value (raise its
        exception with ``propagate``).  A failed parent (an earlier chain
        step) raises at once: this step will never run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        meta = self._wait(deadline, follow_parents)
        if meta["status"] in PROPAGATE_STATES and propagate:
            raise exception_from(meta["result"], meta["status"])
        if meta["status"] in EXCEPTION_STATES:
            return exception_from(meta["result"], meta["status"])
        return meta["result"]

    wait = get

    def _wait(self, deadline: float | None, follow_parents: bool) -> dict[str, Any]:
        listener: Listener | None = None
        try:
            while True:
                meta = self._meta()
                if meta["status"] in READY_STATES:
                    return meta
                if follow_parents:
                    self._raise_parent_failure()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"Task {self.id} is still {meta['status']}: the operation timed out.")
                if listener is None:
                    # Listening before the next read: a result written in between wakes us.
                    listener = Listener.create(db_engine.get_engine(), [], channel=tables.RESULT_CHANNEL)
                    continue
                listener.wait(min(remaining, WAIT_CAP) if remaining is not None else WAIT_CAP)
        finally:
            if listener is not None:
                listener.close()

    def _raise_parent_failure(self) -> None:
        node = self.parent
        while node is not None:
            if isinstance(node, AsyncResult):
                meta = node._meta()
                if meta["status"] in PROPAGATE_STATES:
                    raise exception_from(meta["result"], meta["status"])
            node = getattr(node, "parent", None)

    # -- acting --------------------------------------------------------------------------

    def forget(self) -> None:
        """Delete the task's results (its waiting request, if any, stays)."""
        with db_engine.connect() as conn, conn.begin():
            db_results.forget(conn, self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Any = None,
        wait: bool = False,
        timeout: Any = None,
    ) -> None:
        """Record the revoke (``jobtable_revoke``): the worker that claims
        this id -- the waiting message, a retry, or a message sent after
        the revoke -- discards it as a Celery worker does: REVOKED, a chord
        part counted, ``task_revoked`` sent from the worker.  A waiting
        task is therefore left in the queue until a worker claims it (at
        its countdown/eta): its state stays PENDING until then, as under
        Celery, and it never runs."""
        with db_engine.connect() as conn, conn.begin():
            now = clock.utcnow()
            revokes_sql.add(conn, [(revokes_sql.TASK, "", self.id)], now)
            if terminate:
                # The native worker running it stops it within ~0.25 s and
                # records it REVOKED (worker/cancels.py); ``signal`` is not
                # sent as such: the job gets JobCancelled, then SIGKILL.
                cancels_sql.ask(conn, self.id, now, revoke_task=True)

    def then(self, *args: Any, **kwargs: Any) -> Any:
        raise NotSupported("AsyncResult.then()", "Chain a task instead: chain(a.s(), b.s()).")

    def collect(self, *args: Any, **kwargs: Any) -> Any:
        raise NotSupported("AsyncResult.collect()", "Use get() on each result.")

    # -- identity ---------------------------------------------------------------------------

    def as_tuple(self) -> Any:
        parent = self.parent
        return [[self.id, parent.as_tuple() if parent is not None else None], None]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id


class EagerResult(AsyncResult):
    """The result of a task run in this process (``task_always_eager``)."""

    def __init__(
        self, id: str, ret_value: Any, state: str, traceback: str | None = None, name: str | None = None
    ) -> None:  # noqa: A002
        super().__init__(id, task_name=name)
        self._value = ret_value
        self._state = state
        self._traceback = traceback

    def _meta(self) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "status": self._state,
            "result": self._value,
            "traceback": self._traceback,
            "name": self.task_name,
        }

    def get(self, timeout: float | None = None, propagate: bool = True, *args: Any, **kwargs: Any) -> Any:
        if self._state in PROPAGATE_STATES and propagate:
            raise self._value if isinstance(self._value, BaseException) else exception_from(self._value, self._state)
        return self._value

    wait = get

    def forget(self) -> None:
        pass

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        pass


class GroupResult:
    """The results of a group, in order (a chord's header too)."""

    def __init__(
        self,
        id: str | None = None,
        results: list[AsyncResult] | None = None,
        app: App | None = None,
        parent: Any = None,
    ) -> None:  # noqa: A002
        self.id = id
        self.results = list(results or [])
        self.app = app
        self.parent = parent

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    @property
    def children(self) -> list[AsyncResult]:
        return self.results

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> list[Any]:
        """Every member's value, in order; ``timeout`` bounds the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for member in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(member.get(timeout=remaining, propagate=propagate, **kwargs))
        return values

    join = get

    def forget(self) -> None:
        for member in self.results:
            member.forget()
        if self.id:
            with db_engine.connect() as conn, conn.begin():
                db_results.delete_group(conn, self.id)

    def revoke(self, **kwargs: Any) -> None:
        for member in self.results:
            member.revoke(**kwargs)

    def as_tuple(self) -> Any:
        parent = self.parent
        return [[self.id, parent.as_tuple() if parent is not None else None], [r.as_tuple() for r in self.results]]

    def save(self) -> GroupResult:
        """Store the group (as Celery's backend does) so ``GroupResult.restore(id)`` finds it."""
        with db_engine.connect() as conn, conn.begin():
            db_results.save_group(conn, str(self.id), json.dumps({"result": self.as_tuple()}), clock.utcnow())
        return self

    @classmethod
    def restore(cls, group_id: str, backend: Any = None, app: App | None = None) -> GroupResult | None:
        with db_engine.connect() as conn, conn.begin():
            encoded = db_results.load_group(conn, group_id)
        if encoded is None:
            return None
        (gid, _parent), members = json.loads(encoded)["result"]
        return cls(gid, [AsyncResult(member[0][0], app=app) for member in members], app=app)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"
