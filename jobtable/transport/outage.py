"""Riding out a brief database outage without losing the consumer's channel.

On RabbitMQ or Redis a lost connection means lost deliveries: the broker
requeues what the consumer held, so Kombu and Celery reconnect and start
over, and an ``acks_late`` task that finishes meanwhile cannot be acked --
it runs again.  Here nothing is lost with the connection: a consumer's
messages are rows it holds under a lease (``lease_seconds``), and its acks
wait in a buffer that retries (``acks.py``).  Raising the database's error to
Celery at once would make Celery close the channel and hand back, or leave
to their lease, messages whose tasks are still running -- tasks that then
run twice (the kill/restart benchmark found 2-4 per PostgreSQL restart).

So for the first ``outage_grace`` seconds of an outage the consumer's
``drain_events`` reports "nothing yet" (Kombu's ``socket.timeout``) and
tries again, with short pauses; the channel, its deliveries and its
pending acks stay valid.  Past the grace the error goes to Kombu, which
reconnects as before.  The grace is capped at a third of the lease, so a
consumer riding out an outage never holds rows whose lease its renewals
could not keep.
"""

from __future__ import annotations

import logging
from time import monotonic

# The pauses between tries are the ack writer's: short at first (a restart
# lasts a fraction of a second), then at most a second.
from .acks import retry_delay

logger = logging.getLogger(__name__)

#: Said at WARNING only once a failure has lasted this long: SQLite's
#: "database is locked" under a burst of writers is a wait, not an outage.
WARN_AFTER = 1.0


class OutageGrace:
    """Whether the consumer keeps waiting through a failed claim, and how long
    it pauses before the next try.  Used from one consuming thread."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._since: float | None = None
        self._failures = 0
        self._warned = False

    def ok(self) -> None:
        """A claim reached the database: the outage (if any) is over."""
        if self._since is not None and self._warned:
            logger.warning(
                "jobtable: the database answers again after %.1f s; the consumer kept its messages.",
                monotonic() - self._since,
            )
        self._since = None
        self._failures = 0
        self._warned = False

    def pause_after(self, exc: BaseException) -> float | None:
        """The pause before trying again after ``exc`` (a connection error),
        or None once the outage has lasted past the grace (raise it then)."""
        now = monotonic()
        if self._since is None:
            self._since = now
            logger.debug("jobtable: a claim failed (%s); retrying.", _first_line(exc))
        if now - self._since >= self.grace:
            self._since = None
            self._failures = 0
            self._warned = False
            return None
        if not self._warned and now - self._since >= min(WARN_AFTER, self.grace / 2):
            self._warned = True
            logger.warning(
                "jobtable: the database is unreachable (%s); the consumer keeps its messages "
                "and retries for up to %.1f s (broker_transport_options['outage_grace']) before reconnecting.",
                _first_line(exc),
                self.grace,
            )
        self._failures += 1
        return min(retry_delay(self._failures), self._since + self.grace - now)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    try:
        text = str(orig if orig is not None else exc)
    except Exception:  # an error whose text cannot be made: its type says enough
        text = ""
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]
