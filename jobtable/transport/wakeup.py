"""How an idle consumer waits for work: an adapter over ``jobtable.db.notify``
(the one LISTEN implementation, shared with the native worker).

On PostgreSQL inserts and requeues send ``NOTIFY jobtable, '<queue>'`` and
the listener wakes within milliseconds; on SQLite it watches ``PRAGMA
data_version``.  With ``wakeups=False`` (e.g. behind PgBouncer in transaction
mode) the consumer polls every ``fallback_polling_interval``.  A publish in
the same process always ends the wait at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy.engine import Engine

from ..db.notify import Listener, PgListener


class Waiter(Protocol):
    #: True when something outside this process can end a wait early.
    listens: bool

    def wait(self, queues: Sequence[str], timeout: float) -> None: ...

    def mark(self, queues: Sequence[str]) -> object | None: ...

    def fds(self) -> list[int]: ...

    def clear(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


class LocalWaiter:
    """Sleeps, unless a publish in this process ends the sleep."""

    listens = False

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        if timeout > 0 and self._event.wait(timeout):
            self._event.clear()

    def mark(self, queues: Sequence[str]) -> object | None:
        return None  # cannot tell: always look

    def fds(self) -> list[int]:
        return []

    def clear(self) -> None:
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.set()


class ListenerWaiter:
    """Waits on a ``notify.Listener``, following the consumer's queue set."""

    listens = True

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        wanted = frozenset(queues)
        if wanted != self._listener.queues:
            # Kombu consumers add and cancel queues at any time.
            self._listener.queues = wanted
        self._listener.wait(timeout)

    def mark(self, queues: Sequence[str]) -> object | None:
        return self._listener.mark(queues)

    def fds(self) -> list[int]:
        return self._listener.fds()

    def clear(self) -> None:
        self._listener.clear()

    def wake(self) -> None:
        self._listener.interrupt()

    def close(self) -> None:
        self._listener.close()


def make_waiter(engine: Engine, wakeups: bool, on_bindings_changed: Callable[[], None] | None = None) -> Waiter:
    if not wakeups:
        return LocalWaiter()
    listener = Listener.create(engine, [], use_notify=True)
    if isinstance(listener, PgListener):
        listener.on_bindings_changed = on_bindings_changed
    return ListenerWaiter(listener)
