"""Acks written in batches, off the acking thread.

An ack deletes the message's row.  Done inline, every ack costs its caller a
database round trip — and Celery acks from the prefork pool's result thread,
which then stops handing finished tasks back while it waits, so the whole
worker runs at the speed of one DELETE per task.  Here an ack only records
the row id; one writer thread per process deletes everything recorded so far
in one statement (while it runs, the next acks pile up: batches grow with
the load and a lone ack is written at once).

What that changes for users, and why it is safe:

- an ack is on the table within a round trip or two, not when ``ack()``
  returns — as with AMQP, whose ``basic.ack`` is not confirmed either;
- the connection that acked reads its own acks: queue sizes, purges and
  deletes, and closing the channel, write the buffer first (``flush``);
- a consumer killed between ``ack()`` and the write has its message
  delivered again once the lease lapses (at least once, as always);
- a late write is harmless: the DELETE only touches rows this consumer still
  holds, so a row recovered by another consumer meanwhile is left alone.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

#: Pauses before writing again after the database refused a batch: short
#: at first, so acks held through a brief outage (a server restart takes a
#: fraction of a second) are on the table soon after it ends -- an ack still
#: buffered when the consumer dies is a task run twice -- then at most one
#: attempt a second while the database stays away.
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0


def retry_delay(failures: int) -> float:
    """The pause after ``failures`` failed writes in a row (>= 1)."""
    delay: float = min(MAX_RETRY_DELAY, FIRST_RETRY_DELAY * 2 ** min(max(failures, 1) - 1, 16))
    return delay

_buffers: weakref.WeakSet[AckBuffer] = weakref.WeakSet()


class AckBuffer:
    """Row ids acked in this process and not yet deleted."""

    def __init__(self, write: Callable[[Sequence[int]], object]) -> None:
        #: Deletes the given rows (the transport's guarded DELETE).
        self._write = write
        self._reset()
        _buffers.add(self)

    def _reset(self) -> None:
        # Also run in a forked child: the parent's pending ids are not its
        # to write, and the parent's lock may have been held at fork time.
        self._cond = threading.Condition()
        self._ids: list[int] = []
        self._writing = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, ids: Sequence[int]) -> None:
        with self._cond:
            self._ids.extend(ids)
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._run, name="jobtable-kombu-acks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self) -> None:
        """Write every ack recorded so far before returning (read-your-acks)."""
        with self._cond:
            while self._writing:  # a batch in flight may hold earlier acks
                self._cond.wait()
            ids, self._ids = self._ids, []
            if not ids:
                return
            self._writing = True
        try:
            self._write(ids)
        except Exception:
            with self._cond:
                self._ids[:0] = ids  # the writer thread tries again
            raise
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def close(self) -> None:
        """Write what is left and stop the writer thread."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._ids and not self._closed:
                    self._cond.wait()
                if self._closed and not self._ids:
                    return
                while self._writing:
                    self._cond.wait()
                ids, self._ids = self._ids, []
                if not ids:
                    continue
                self._writing = True
            failed = False
            try:
                self._write(ids)
                failures = 0
            except Exception as exc:
                # Kept for the next try; if the database stays away past the
                # lease, the rows are recovered and this DELETE matches nothing.
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning("jobtable: could not write %d ack(s), retrying: %s", len(ids), exc)
                failed = True
            with self._cond:
                self._writing = False
                if failed and not self._closed:
                    self._ids[:0] = ids
                self._cond.notify_all()
                if failed and not self._closed:
                    self._cond.wait(retry_delay(failures))


def _after_fork_in_child() -> None:
    for buffer in list(_buffers):
        buffer._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
