"""The routed part of a member's ledger (ledger.py): a member of a routed
queue (routing/member.py) has no rows, its jobs are a broker's deliveries.

An anonymous shared mapping, made by the supervisor before fork, holds for
each job the member started since its last committed flush the job's queue
and stored message, and how it ended once it returned -- what the
supervisor needs to record those attempts (LOST, retried or QUARANTINED,
routing/lost.py) when the member dies, the way it records a table member's.
Memory writes only, no I/O per job.

The part also carries the member's broker sockets to the supervisor
(``hand_socket``: SCM_RIGHTS over a socket pair), which keeps a copy open
until the dead member's end is recorded.  The broker requeues a consumer's
unacked deliveries when its connection closes: a member killed mid-job
would otherwise have its deliveries handed to another consumer before the
LOST result is written, and the job that killed it would run again.  A
member that closes its connection itself (shutdown, a lost connection)
closes it at the AMQP level, which the copy does not hold up.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..states import LEDGER_STATUSES as STATUSES

_CODES = {name: code for code, name in enumerate(STATUSES) if name}


@dataclass
class RoutedJob:
    """A job a routed member started since its last committed flush."""

    queue: str
    message: str
    #: Unix time it started.
    started: float
    #: "" while it runs (it was running when the member died), else the
    #: status its outcome had.
    status: str = ""
    #: Its outcome asked for another attempt.
    retry: bool = False


#: A routed job's entry: status code (0: running; STATUSES' index, or
#: len(STATUSES) for a status it does not know; + _RETRY_FLAG when the
#: outcome asked for a retry), start time in microseconds, queue length,
#: message length; then the UTF-8 queue and message, padded to 8 bytes.
_ENTRY = struct.Struct("=qqii")
_RETRY_FLAG = 64
#: The part's header: bytes used, entries, overflow (an entry did not fit).
_ROUTED_HEAD = 32


class RoutedJobs:
    """The routed part of a member's ledger (see the module's doc).  The
    member writes it with memory writes only, no I/O per job."""

    def __init__(self, size: int, *, sockets: bool = True) -> None:
        self.size = max(_ROUTED_HEAD + 4096, size)
        self._mm = mmap.mmap(-1, self.size)  # MAP_SHARED: the forked member's writes are seen here
        self._head = memoryview(self._mm)[:_ROUTED_HEAD].cast("q")
        self._head[0] = _ROUTED_HEAD
        self._last = 0  # offset of the last entry (the member's side)
        # Broker sockets: a forked member sends them, the supervisor holds
        # them (``sockets`` False: a thread member, whose process is ours).
        self._to_supervisor: socket.socket | None = None
        self._from_member: socket.socket | None = None
        if sockets:
            self._to_supervisor, self._from_member = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._from_member.setblocking(False)
        self.held: list[int] = []

    # -- the member's side -------------------------------------------------------

    def start(self, queue: str, message: str, started: float) -> bool:
        """Before any code of the job runs.  False when it does not fit in
        what is left (flush the finished ones first); a job that does not
        fit even alone is marked overflow (the supervisor cannot record it)."""
        q = queue.encode("utf-8", "surrogatepass")
        m = message.encode("utf-8", "surrogatepass")
        head = self._head
        at = head[0]
        end = at + _ENTRY.size + len(q) + len(m)
        end += -end % 8
        if end > self.size:
            if head[1]:
                return False
            head[2] = 1
            return True
        entry = _ENTRY.pack(0, int(started * 1_000_000), len(q), len(m)) + q + m
        self._mm[at:at + len(entry)] = entry
        self._last = at
        head[0] = end
        head[1] += 1
        return True

    def done(self, status: str, retry: bool) -> None:
        """The job last started returned with ``status``."""
        if self._head[1]:
            code = _CODES.get(status, 0) or len(STATUSES)
            struct.pack_into("=q", self._mm, self._last, code + (_RETRY_FLAG if retry else 0))

    def flushed(self) -> None:
        """The finished jobs' results committed (never while one runs)."""
        head = self._head
        head[1] = 0
        head[2] = 0
        head[0] = _ROUTED_HEAD

    def hand_socket(self, sock: socket.socket) -> None:
        """Give the supervisor a copy of this broker connection's socket."""
        if self._to_supervisor is None:
            return
        try:
            socket.send_fds(self._to_supervisor, [b"s"], [sock.fileno()])
        except (OSError, ValueError):
            pass  # the supervisor is gone (then so are we), or the socket is

    def drop_socket(self) -> None:
        """The member closed its connection: the supervisor's copy must not
        hold it open (a connection the member gave up on as broken may
        still be alive for the broker, holding its deliveries)."""
        if self._to_supervisor is None:
            return
        try:
            self._to_supervisor.send(b"d")
        except OSError:
            pass

    # -- the supervisor's side -----------------------------------------------------

    def jobs(self) -> tuple[list[RoutedJob], bool]:
        """The jobs started since the last flush, and whether every one
        was kept (False: one did not fit)."""
        out: list[RoutedJob] = []
        head = self._head
        at, count, complete = _ROUTED_HEAD, int(head[1]), not head[2]
        mm = self._mm
        for _ in range(count):
            if at + _ENTRY.size > self.size:
                return out, False
            code, started, qlen, mlen = _ENTRY.unpack_from(mm, at)
            body = at + _ENTRY.size
            if qlen < 0 or mlen < 0 or body + qlen + mlen > self.size:
                return out, False
            retry = code >= _RETRY_FLAG
            code -= _RETRY_FLAG if retry else 0
            out.append(RoutedJob(
                queue=mm[body:body + qlen].decode("utf-8", "surrogatepass"),
                message=mm[body + qlen:body + qlen + mlen].decode("utf-8", "surrogatepass"),
                started=started / 1_000_000,
                status=STATUSES[code] if 0 < code < len(STATUSES) else ("" if code == 0 else "?"),
                retry=retry,
            ))
            at = body + qlen + mlen
            at += -at % 8
        return out, complete

    def receive_sockets(self) -> None:
        """Take the sockets the member sent; only the newest is kept (an
        older one belongs to a connection the member closed), none after
        ``drop_socket``."""
        while self._from_member is not None:
            try:
                _, fds, _, _ = socket.recv_fds(self._from_member, 16, 16)
            except (OSError, ValueError):  # BlockingIOError: nothing more
                return
            self.close_sockets()  # a newer one, or none ("d")
            self.held = fds[-1:]
            for fd in fds[:-1]:
                _close(fd)

    def close_sockets(self) -> None:
        """The member's end is recorded (or we are a new member that
        inherited them): let the broker see its connections close."""
        held, self.held = self.held, []
        for fd in held:
            _close(fd)

    def in_child(self, own: bool) -> None:
        """After fork, in a member: keep only the sending end of its own part."""
        self.close_sockets()
        if self._from_member is not None:
            self._from_member.close()
        if not own and self._to_supervisor is not None:
            self._to_supervisor.close()

    def in_supervisor(self) -> None:
        """After fork, in the supervisor: the member's end is the member's."""
        if self._to_supervisor is not None:
            self._to_supervisor.close()

    def close(self) -> None:
        self.close_sockets()
        for sock in (self._to_supervisor, self._from_member):
            if sock is not None:
                sock.close()


#: Room for one of the largest messages a routed job can have (twice: the
#: stored envelope's escaping), however large the setting.
MIN_SIZE = 1 << 20
MAX_SIZE = 64 << 20


def size_for(max_message_size: int) -> int:
    """The routed part's size for the ``max_message_size`` setting."""
    return max(MIN_SIZE, min(MAX_SIZE, 2 * max_message_size + (64 << 10)))


class HasRouted(Protocol):
    """A ledger (ledger.Ledger) as ``in_child`` reads it: its routed part."""

    routed: RoutedJobs | None


def in_child(own: HasRouted | None, others: Sequence[HasRouted | None]) -> None:
    """In a new member process: close the broker sockets the supervisor
    holds for other members (a copy here would keep a dead member's
    connection open, its deliveries held, for as long as this one lives)."""
    for other in others:
        if other is not None and other is not own and other.routed is not None:
            other.routed.in_child(own=False)
    if own is not None and own.routed is not None:
        own.routed.in_child(own=True)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
