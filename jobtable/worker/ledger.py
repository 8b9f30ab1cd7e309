"""Which claimed jobs a pool member has started since its last committed flush.

A member claims a batch, runs it in order and writes the results later (one
transaction per batch).  If it dies in between, its claimed rows are of three
kinds that the database cannot tell apart (they are all ``running`` under its
worker id): started and still running when it died (LOST: the job may have
killed it), finished but not written yet (their results are gone: LOST, but
they did not kill anything), and not started (back to pending, they never
ran).  The ledger tells them apart: the member appends a row id *before* any
of that job's code runs and counts it done once the job returned, noting how
it ended (succeeded, failed for good, asked for a retry...) -- plain memory
writes, no I/O per job -- and empties it after the flush commits.  So a
finished job whose result died with the process is recorded with the status
it had (SUCCESSFUL, its return value lost), not LOST.

It lives in a small file mapped into memory (MAP_SHARED), one per member,
named after the worker id, in a private runtime directory: the supervisor
reads it when the member dies, and a peer on the same machine reads it when
the whole worker was killed (kill -9 of the process group, OOM): the page
cache keeps what the dead processes wrote.  The header records the boot id,
so a file left by an earlier boot is never trusted.  Whoever cannot read a
valid ledger (another host, the file missing, corrupt or truncated) falls
back to the conservative rescue: every running row of the worker is LOST.

A member of a routed queue (routing/member.py) has no rows: its jobs are
deliveries of a broker.  Its ledger has a second part instead
(``routed_ledger.RoutedJobs``).
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..pids import pid_alive
from ..privatedirs import private_dir
from ..states import LEDGER_STATUSES

if TYPE_CHECKING:
    from .routed_ledger import RoutedJobs

logger = logging.getLogger("jobtable.worker")

MAGIC = b"JTLEDGR2"
#: The first format (no statuses): still read, from a worker of the
#: version before (its finished jobs are recorded LOST, as it would have).
MAGIC_V1 = b"JTLEDGR1"
#: magic, capacity, supervisor pid, count, done, overflow, boot id, scope
#: (which database: workers of other databases on this machine are not ours
#: to sweep), worker id
_HEADER = struct.Struct("=8sqqqqq48s32s384s")
HEADER_SIZE = 512
assert _HEADER.size == HEADER_SIZE
# int64 indexes of the header fields in the mapped view
_COUNT, _DONE, _OVERFLOW = 3, 4, 5
_IDS = HEADER_SIZE // 8
#: How a finished job ended, one int64 per id after the ids (0: unknown).
STATUSES = LEDGER_STATUSES
_CODES = {name: code for code, name in enumerate(STATUSES) if name}
SUFFIX = ".ledger"
#: A file whose header cannot be read (never one of ours once renamed into
#: place) or a half-made temporary file is swept after this long.
STALE_UNREADABLE = 60.0
#: A dead worker's ledger that no worker of its database swept (the database
#: is gone, or none of its workers runs here) goes after a day.
STALE_DEAD = 86400.0


@dataclass
class LedgerState:
    """What a ledger says about a member's claimed rows."""

    #: Started and not finished (at most one: the job that was running).
    running: list[int] = field(default_factory=list)
    #: Finished, result not written yet: outcomes that asked for no retry
    #: (succeeded, or failed for good) ...
    finished: list[int] = field(default_factory=list)
    #: ... and outcomes that asked for a retry.
    finished_retry: list[int] = field(default_factory=list)
    #: Finished row id -> the status its outcome had ("" or absent: unknown).
    statuses: dict[int, str] = field(default_factory=dict)
    #: False when more rows were started than the ledger holds: then only
    #: the conservative rescue is safe.
    complete: bool = True


def boot_id() -> str:
    """This kernel boot's id ("" where the platform has none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:48]
    except OSError:
        return ""


def _candidate_dirs() -> list[Path]:
    """Where ledgers may live, preferred first: memory-backed directories
    (gone at reboot), then the temp directory.  Rescuers look in all of them."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    dirs = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(Path(runtime) / "jobtable")
    if os.path.isdir("/dev/shm"):
        dirs.append(Path("/dev/shm") / f"jobtable-{uid}")
    dirs.append(Path(tempfile.gettempdir()) / f"jobtable-{uid}")
    return dirs


def file_name(worker_id: str) -> str:
    # Readable, and safe whatever the host name holds: the digest keeps
    # distinct ids apart after the other characters are replaced.
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)[:80]
    digest = hashlib.sha256(worker_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{readable}-{digest}{SUFFIX}"


def _ledger_paths(worker_id: str) -> Iterator[Path]:
    for directory in _candidate_dirs():
        if private_dir(directory, create=False):
            yield directory / file_name(worker_id)


class Ledger:
    """A member's ledger: written by the member, read by its supervisor."""

    def __init__(self, mm: mmap.mmap, capacity: int, path: Path | None) -> None:
        self._mm = mm
        self._view = memoryview(mm).cast("q")
        self.capacity = capacity
        self._statuses = _IDS + capacity
        self.path = path
        #: The routed part (routed_ledger.py) of a routed queue's member.
        self.routed: RoutedJobs | None = None

    @classmethod
    def create(cls, worker_id: str, capacity: int, scope: str = "", *, file: bool = True) -> Ledger:
        """A file-backed ledger (``file`` False, or no usable runtime
        directory: an anonymous one -- members are still rescued exactly by
        their supervisor, a killed worker conservatively)."""
        capacity = max(1, capacity)
        size = HEADER_SIZE + capacity * 16
        header = _HEADER.pack(
            MAGIC,
            capacity,
            os.getpid(),
            0,
            0,
            0,
            boot_id().encode(),
            scope.encode()[:32],
            worker_id.encode("utf-8", "replace")[:384],
        )
        for directory in _candidate_dirs() if file else []:
            if not private_dir(directory, create=True):
                continue
            path = directory / file_name(worker_id)
            temp = directory / f".{path.name}.{os.getpid()}.tmp"
            try:
                # Written whole under a temporary name, then renamed: a
                # ledger that has its final name always has its header.
                fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, header, 0)
                    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                finally:
                    os.close(fd)
                os.replace(temp, path)
            except (OSError, ValueError) as exc:
                logger.debug("Cannot make a ledger in %s (%s).", directory, exc)
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                continue
            return cls(mm, capacity, path)
        if file:
            logger.warning(
                "No writable runtime directory for the worker's ledger; a killed worker is rescued conservatively."
            )
        mm = mmap.mmap(-1, size)
        mm[:HEADER_SIZE] = header
        return cls(mm, capacity, None)

    # -- the member's side (memory writes only) --------------------------------

    def start(self, row_id: int) -> None:
        """Before any code of job ``row_id`` runs."""
        view = self._view
        n = view[_COUNT]
        if n >= self.capacity:
            view[_OVERFLOW] = 1
            return
        view[_IDS + n] = row_id
        view[_COUNT] = n + 1

    def done(self, retry: bool = False, status: str = "") -> None:
        """The job last started returned (its outcome waits to be written);
        ``retry``: the outcome asks for another attempt (kept as the id's
        sign); ``status``: the outcome's status (written before the job
        counts as done, so a reader never sees a done job without it)."""
        view = self._view
        index = view[_DONE]
        if index < view[_COUNT]:
            if retry:
                view[_IDS + index] = -abs(view[_IDS + index])
            view[self._statuses + index] = _CODES.get(status, 0)
            view[_DONE] = index + 1

    def flushed(self) -> None:
        """The finished jobs' results committed: forget them, keep a started
        job that never finished (a member crashing out of a job)."""
        view = self._view
        count, done = view[_COUNT], view[_DONE]
        if done >= count:
            view[_COUNT] = 0
            view[_DONE] = 0
            view[_OVERFLOW] = 0
            return
        # Crash-safe order: the unfinished ids are in [done, count) until
        # they are copied to the front; a flushed id seen as unfinished
        # meanwhile is harmless (its row is gone, ``rescue_sql.lose`` skips it).
        unfinished = [view[_IDS + i] for i in range(done, count)]
        for i, row_id in enumerate(unfinished):
            view[_IDS + i] = row_id
        view[_DONE] = 0
        view[_COUNT] = len(unfinished)

    # -- the supervisor's side --------------------------------------------------

    def state(self) -> LedgerState:
        return _state(
            self._view[_COUNT], self._view[_DONE], self._view[_OVERFLOW], self.capacity, self._view, self._statuses
        )

    def close(self) -> None:
        """Remove the file (its member's end is recorded).  The mapping
        stays until garbage collected: a thread member given up on at
        shutdown may still be writing to it."""
        if self.routed is not None:
            self.routed.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None


def _state(
    count: int, done: int, overflow: int, capacity: int, view: memoryview, statuses: int | None
) -> LedgerState:
    """``statuses``: index of the status array in ``view`` (None: a v1 ledger)."""
    if not (0 <= done <= count <= capacity):
        return LedgerState(complete=False)
    ids = [int(view[_IDS + i]) for i in range(count)]
    running, finished = ids[done:], ids[:done]
    if any(i <= 0 for i in running) or any(i == 0 for i in finished):
        return LedgerState(complete=False)
    known: dict[int, str] = {}
    if statuses is not None:
        for i, row_id in enumerate(finished):
            code = int(view[statuses + i])
            if 0 < code < len(STATUSES):
                known[abs(row_id)] = STATUSES[code]
    return LedgerState(
        running=running,
        finished=[i for i in finished if i > 0],
        finished_retry=[-i for i in finished if i < 0],
        statuses=known,
        complete=not overflow,
    )


@dataclass
class _Parsed:
    worker_id: str
    pid: int
    boot: str
    scope: str
    state: LedgerState


def _parse(data: bytes) -> _Parsed | None:
    if len(data) < HEADER_SIZE:
        return None
    magic, capacity, pid, count, done, overflow, boot, scope, worker = _HEADER.unpack_from(data)
    width = {MAGIC: 16, MAGIC_V1: 8}.get(magic)
    if width is None or capacity < 1 or len(data) != HEADER_SIZE + capacity * width:
        return None
    view = memoryview(data).cast("q")
    return _Parsed(
        worker.rstrip(b"\0").decode("utf-8", "replace"),
        pid,
        boot.rstrip(b"\0").decode("ascii", "replace"),
        scope.rstrip(b"\0").decode("ascii", "replace"),
        _state(count, done, overflow, capacity, view, _IDS + capacity if magic == MAGIC else None),
    )


def read(worker_id: str) -> LedgerState | None:
    """The ledger a dead worker ``worker_id`` left on this machine, or None
    when there is no trustworthy one (never raises)."""
    for path in _ledger_paths(worker_id):
        try:
            with open(path, "rb") as f:
                data = f.read(HEADER_SIZE + 16 * 10_000_000)
        except OSError:
            continue
        try:
            parsed = _parse(data)
        except Exception:
            parsed = None
        if parsed is None or parsed.worker_id != worker_id or parsed.boot != boot_id() or not parsed.state.complete:
            return None
        return parsed.state
    return None


def scope_of(database_url: str) -> str:
    """The ledger scope of a database (a digest of its URL, password hidden)."""
    return hashlib.sha256(database_url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def stale_files(scope: str) -> tuple[list[Path], dict[str, Path]]:
    """Ledgers nobody will need: (files to delete now, {worker id: file} of
    ``scope`` whose supervisor is gone -- delete those once the database no
    longer knows the worker, i.e. after it was rescued)."""
    now = time.time()
    junk: list[Path] = []
    dead: dict[str, Path] = {}
    me = boot_id()
    for directory in _candidate_dirs():
        if not private_dir(directory, create=False):
            continue
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for path in entries:
            try:
                age = now - path.lstat().st_mtime
                if path.name.endswith(".tmp"):
                    if age > STALE_UNREADABLE:
                        junk.append(path)
                    continue
                if not path.name.endswith(SUFFIX):
                    continue
                with open(path, "rb") as f:
                    parsed = _parse(f.read(HEADER_SIZE + 16 * 10_000_000))
            except (OSError, ValueError, struct.error):
                continue
            if parsed is None:
                if age > STALE_UNREADABLE:
                    junk.append(path)
            elif parsed.boot != me:
                junk.append(path)
            elif not pid_alive(parsed.pid, None):
                if parsed.scope == scope:
                    dead[parsed.worker_id] = path
                elif age > STALE_DEAD:
                    junk.append(path)
    return junk, dead


def remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
