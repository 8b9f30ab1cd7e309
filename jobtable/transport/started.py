"""Which messages a Celery worker on the transport really started.

A consumer that dies holds two kinds of messages the database cannot tell
apart: the ones its task code was running (one of them may have killed it)
and the ones it had only prefetched.  Counting a crash for both quarantines
innocent messages: recovered messages go back to the head of the queue, the
next short-lived consumer prefetches them again, and after
``worker_quarantine_after`` kills a message that never ran is QUARANTINED.

So a Celery worker keeps a small same-host ledger, as the native worker does
(``worker/ledger.py``): a private directory per consumer (a jobtable
Connection consuming), named after its pid and token, whose ``owner`` file
holds the consumer id (a later process reusing the pid has another token).  Celery's
``task_prerun`` signal -- in the prefork child that runs the task, or in
the consumer itself for the solo and thread pools -- appends the task id to
a file of its own process in the directories of its process (or parent), one ``write`` per task and no
fsync: the page cache keeps it when the processes are killed.  A peer on
the same host that recovers the dead consumer's leases reads the ids and
counts a crash only for messages that were started (``leases.py``).

The same record tells the living consumer what to show as running: each
start is a record of two lines written at once, the task id and then
``TAG_MARK`` and the message's delivery tag (``<row id>:<delivery>``, empty
when Celery did not pass it on).  The consumer's lease thread reads the new
records of its ledger every half second (``Tail``) and marks the rows it
still holds started, in one UPDATE (``leases.LeaseKeeper.report_started``).
A tag names one delivery, so a message delivered again (a requeue, Celery's
retry under the same task id) is not taken as started before it starts again.

Without a ledger -- a consumer on another host, a plain Kombu consumer (no
Celery loaded), a Celery worker killed before any task started, a message
that is not a Celery task (no ``task`` header) -- every held message counts
a crash, as before: safe for the quarantine, which then errs on the side of
stopping a message.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..pids import pid_alive, process_start
from ..privatedirs import private_dir

logger = logging.getLogger(__name__)

OWNER = "owner"
PREFIX = "kombu-"
#: A writer's file is rewritten with only its running tasks past this size.
ROTATE_AT = 64 * 1024
#: A directory of a dead pid nobody recovered is removed after this long.
STALE_AFTER = 3600.0
#: Starts the second line of a record, the delivery tag.  (A ledger reader
#: of an older version takes that line for one more task id: no harm.)
TAG_MARK = "#"
#: What a delivery tag of this transport looks like (channel._payload).
_TAG = re.compile(r"[0-9]{1,20}:[0-9]{1,10}")

_lock = threading.Lock()
#: Task ids started in this process and not finished (thread and green
#: pools run several at once), with the ledger lines written for them.
_running: dict[str, str] = {}
_connected = False


def base_dir() -> Path | None:
    """The private directory of this user's ledgers (memory-backed where
    there is one), or None when none can be made safely."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
    path = root / f"jobtable-{uid}-started"
    return path if private_dir(path, create=True) else None


_base: tuple[int, Path | None] | None = None


def _cached_base() -> Path | None:
    global _base
    if _base is None or _base[0] != os.getpid():
        _base = (os.getpid(), base_dir())
    return _base[1]


def _path_of(consumer_id: str) -> Path | None:
    """The ledger directory of ``kombu:<host>:<pid>:<token>`` when the host
    is this one."""
    parts = consumer_id.split(":")
    if len(parts) < 4 or parts[0] != "kombu" or ":".join(parts[1:-2]) != socket.gethostname():
        return None
    pid, token = parts[-2], parts[-1]
    if not pid.isdigit() or not token.isalnum():
        return None
    base = _cached_base()
    return None if base is None else base / f"{PREFIX}{pid}-{token}"


def _pid_in(name: str) -> int | None:
    pid = name[len(PREFIX):].split("-", 1)[0]
    return int(pid) if name.startswith(PREFIX) and pid.isdigit() else None


def celery_loaded() -> bool:
    return "celery" in sys.modules


def create(consumer_id: str) -> None:
    """Called by a consuming process of a Celery worker: make its ledger
    directory (removing those left under its pid by an earlier process) and
    make sure this process records the tasks it starts."""
    path = _path_of(consumer_id)
    if path is None:
        return
    connect_signals()
    born = process_start(os.getpid())
    try:
        for item in path.parent.iterdir():
            if _pid_in(item.name) == os.getpid() and born is not None and item.stat().st_mtime < born - 2.0:
                shutil.rmtree(item, ignore_errors=True)
        path.mkdir(mode=0o700, exist_ok=True)
        tmp = path / f".{OWNER}"
        tmp.write_text(consumer_id)
        os.replace(tmp, path / OWNER)  # the owner appears whole, or not at all
    except OSError as exc:
        logger.warning("jobtable: no started-task ledger (%s); a dead consumer's messages all count a crash", exc)
    sweep()


def remove(consumer_id: str) -> None:
    """Forget a consumer's ledger (it stopped, or its messages are recovered)."""
    path = _path_of(consumer_id)
    if path is not None and _owner(path) == consumer_id:
        shutil.rmtree(path, ignore_errors=True)


def read(consumer_id: str) -> set[str] | None:
    """Task ids the consumer's processes started, or None when there is no
    ledger to trust here (then every held message counts a crash)."""
    path = _path_of(consumer_id)
    if path is None or _owner(path) != consumer_id:
        return None
    started: set[str] = set()
    writers = 0
    try:
        for item in path.iterdir():
            if item.name.isdigit():
                writers += 1
                # Bytes: read_text's universal newlines would split at "\r".
                started.update(_task_ids(item.read_bytes().decode("utf-8", "replace")))
    except OSError:
        return None
    # A ledger that never saw a task start is no evidence (the consumer may
    # not be a Celery worker's, or died before its first task).
    return started if writers else None


def _task_ids(text: str) -> list[str]:
    """The task ids of a ledger file: the first line of each record.  Split
    at "\n" only (``str.splitlines`` also splits at characters a task id may
    hold: \x1c-\x1e, \x85, \u2028...).  Only a second line that is a tag
    line is left out, so that a file of task ids alone (written by an older
    version) loses none, and a task id that looks like a tag line is kept
    (a kept line too many can only count a crash, never hide one)."""
    lines = text.split("\n")
    return [
        line
        for index, line in enumerate(lines)
        if line and not (index % 2 and line.startswith(TAG_MARK) and _is_tag(line[len(TAG_MARK):]))
    ]


def _is_tag(text: str) -> bool:
    return not text or _TAG.fullmatch(text) is not None


def any_ledger() -> bool:
    """Whether this host has a ledger at all (else recovery asks nothing)."""
    base = _cached_base()
    try:
        return base is not None and any(e.name.startswith(PREFIX) for e in os.scandir(base))
    except OSError:
        return False


def consumer_dead(consumer_id: str) -> bool:
    path = _path_of(consumer_id)
    pid = None if path is None else _pid_in(path.name)
    return pid is not None and not pid_alive(pid, None)


def sweep() -> None:
    """Remove ledgers of dead pids older than ``STALE_AFTER`` (nobody
    recovered them: no consumer of their database ran here since)."""
    base = base_dir()
    if base is None:
        return
    now = time.time()
    for item in base.iterdir():
        pid = _pid_in(item.name)
        try:
            old = now - item.stat().st_mtime > STALE_AFTER
        except OSError:
            continue
        if pid is not None and old and not pid_alive(pid, None):
            shutil.rmtree(item, ignore_errors=True)


def _owner(path: Path) -> str | None:
    try:
        return (path / OWNER).read_text()
    except OSError:
        return None


def _ledger_dirs() -> list[Path]:
    """The ledgers this process writes to: its own consumers' (solo, threads:
    it is the consumer), else its parent's (a prefork child of the consumer).
    Looked up per task: the parent's consumers change when it reconnects."""
    base = _cached_base()
    if base is None:
        return []
    mine, parent = os.getpid(), os.getppid()
    try:
        found = [(_pid_in(e.name), Path(e.path)) for e in os.scandir(base) if e.name.startswith(PREFIX)]
    except OSError:
        return []
    own = [path for pid, path in found if pid == mine]
    return own or [path for pid, path in found if pid == parent]


def task_started(task_id: str, delivery_tag: str | None = None) -> None:
    """Record that this process starts ``task_id`` (delivered as
    ``delivery_tag`` when known: what the consumer reports as running)."""
    # One record, always two lines: a task id cannot add lines of its own
    # (its newlines are replaced: such an id matches no row in ``read``,
    # as before), so a tag line is always a record's second.
    tag = delivery_tag if isinstance(delivery_tag, str) and _TAG.fullmatch(delivery_tag) else ""
    line = f"{task_id.replace(chr(10), ' ')}\n{TAG_MARK}{tag}\n"
    with _lock:
        _running[task_id] = line
        for path in _ledger_dirs():
            _append(path, line)


def _append(path: Path, line: str) -> None:
    """One write, to this process's file (called under ``_lock``)."""
    if not (path / OWNER).exists():
        return
    mine = path / str(os.getpid())
    try:
        fd = os.open(mine, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8", "surrogatepass"))
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > ROTATE_AT:
            # Only the running tasks matter; finished ones were (or will
            # be) acked, and a redelivery of one is not a crash.
            tmp = path / f".{os.getpid()}"
            tmp.write_bytes("".join(_running.values()).encode("utf-8", "surrogatepass"))
            os.replace(tmp, mine)
    except OSError as exc:
        logger.warning("jobtable: could not record a started task: %s", exc)


def task_finished(task_id: str) -> None:
    with _lock:
        _running.pop(task_id, None)


def _delivery_tag(task: Any) -> str | None:
    """The delivery tag of the message ``task`` runs from: Celery passes
    the message's properties to the process running it (``request.properties``)."""
    try:
        properties = getattr(task.request, "properties", None)
        tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    except Exception:  # noqa: BLE001  (a task class of its own; the id is still recorded)
        return None
    return tag if isinstance(tag, str) else None


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id and isinstance(task_id, str):
        task_started(task_id, _delivery_tag(task))


def _on_postrun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        task_finished(task_id)


class Tail:
    """The delivery tags a consumer's processes recorded since the last look:
    its lease thread asks every half second, and reads only the bytes added
    to each file since then (a rotated file is read again from the start;
    a tag seen twice is harmless, the UPDATE marks a row once)."""

    def __init__(self, consumer_id: str) -> None:
        self._path = _path_of(consumer_id)
        #: file name -> (inode, bytes read)
        self._read: dict[str, tuple[int, int]] = {}

    def new_tags(self) -> set[str]:
        path = self._path
        tags: set[str] = set()
        if path is None:
            return tags
        try:
            entries = [e for e in os.scandir(path) if e.name.isdigit()]
        except OSError:
            return tags
        seen: dict[str, tuple[int, int]] = {}
        for entry in entries:
            try:
                info = entry.stat()
                inode, offset = self._read.get(entry.name, (info.st_ino, 0))
                if inode != info.st_ino or info.st_size < offset:
                    inode, offset = info.st_ino, 0  # rotated
                if info.st_size > offset:
                    with open(entry.path, "rb") as f:
                        f.seek(offset)
                        chunk = f.read(info.st_size - offset)
                    offset += _parse_records(chunk, tags)
                seen[entry.name] = (inode, offset)
            except OSError:
                continue  # gone meanwhile (the consumer's process ended)
        self._read = seen
        return tags


def _parse_records(chunk: bytes, tags: set[str]) -> int:
    """Add the delivery tags of the whole records in ``chunk`` to ``tags``;
    returns the bytes they take (a record still being written is read next
    time)."""
    lines = chunk.split(b"\n")
    used = 0
    for index in range(0, len(lines) - 2, 2):
        task_line, tag_line = lines[index], lines[index + 1]
        used += len(task_line) + len(tag_line) + 2
        tag = tag_line.decode("utf-8", "replace")[len(TAG_MARK):]
        if tag_line.startswith(TAG_MARK.encode()) and tag and _is_tag(tag):
            tags.add(tag)
    return used


def connect_signals() -> None:
    """Connect to Celery's task signals once per process (inherited by
    processes forked afterwards)."""
    global _connected
    if _connected or not celery_loaded():
        return
    from celery import signals

    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="jobtable.transport.started.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="jobtable.transport.started.postrun")
    _connected = True
