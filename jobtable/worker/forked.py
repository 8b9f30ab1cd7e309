"""The body of a forked pool member process (``main.Supervisor`` forks it).

It never outlives its supervisor, leaves SIGINT to it, stops at the first
SIGTERM (further ones are the supervisor's to act on: it
SIGKILLs members on a second signal), adopts the supervisor's engines, runs its
``Member`` -- a spare first waits in ``Member.standby`` -- and leaves with
``os._exit`` so that nothing inherited from the supervisor runs twice.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from .. import telemetry
from ..db import engine as db_engine
from . import hooks
from .cancels import Cancellable
from .config import WorkerConfig
from .ledger import Ledger
from ..settings import get_settings
from .process import Member
from .timeouts import AlarmTimeout


def member_class(config: WorkerConfig) -> type:
    """The table's Member, or the Kombu one for routed queues (issue 18);
    Kombu is imported only by workers of routed queues."""
    if get_settings().broker_routes:
        from ..routing.member import member_class as routed_or_table

        return routed_or_table(config)
    return Member


def die_with_parent(parent: int) -> None:
    """A member must not outlive its supervisor (nobody would heartbeat it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:
        os._exit(1)


def child(
    config: WorkerConfig, worker_id: str, slot: Any, parent: int, ledger: Ledger, go: int = -1
) -> None:  # pragma: no cover
    """Body of a forked member (``go`` >= 0: a spare, see Member.standby); never returns."""
    code = 1
    try:
        # The heap inherited from the supervisor (SQLAlchemy, the app's
        # modules: ~70k objects) lives as long as the member: out of the
        # collector's reach, a full collection walks only what the member
        # made since.  Without this, a job that allocates many containers
        # (a 10,000-deep return value) set off full collections of the whole
        # heap, ~2-3 ms of each such job, and each walk wrote to every
        # inherited page (copy-on-write copies).  Anything of that heap that
        # is garbage stays, as it would in the supervisor.
        gc.freeze()
        die_with_parent(parent)
        # The supervisor's SIGCHLD handler is not ours (a job's subprocesses
        # would wake the supervisor); its engines and schema check are.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        db_engine.adopt_parent_engines()
        stop = threading.Event()
        member_ref: list[Any] = []

        def on_term(signum: int, frame: Any) -> None:
            # Only the first SIGTERM means something here.  A SIGTERM sent to
            # the whole process group (systemd's default KillMode, honcho,
            # `kill -- -PGID`) reaches a member twice: from the sender and
            # from the supervisor passing it on.  Taking the second as "stop
            # now" made idle members exit 1 (logged as a crash) and busy
            # ones lose their job on a normal shutdown.  "Stop now" is the
            # supervisor's: on a second signal it SIGKILLs the members and
            # records their jobs.
            if stop.is_set():
                return
            stop.set()
            if member_ref:
                member_ref[0].listener.interrupt()

        # The terminal's Ctrl-C reaches the whole process group: members
        # leave SIGINT to the supervisor, which sends SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, on_term)
        # Blocked by the supervisor across the fork (main.py): a SIGTERM that
        # came meanwhile is delivered now, to on_term.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        hooks.fire(hooks.MEMBER_STARTED, socket.gethostname())
        timer = Cancellable(AlarmTimeout(), slot)  # timeouts and cancels (cancels.py)
        member = member_class(config)(config, worker_id, slot, timer=timer, should_stop=stop.is_set, ledger=ledger)
        member_ref.append(member)
        if go >= 0 and not member.standby(go):
            code = 0  # stopped before it was needed
        else:
            code = member.run()
        hooks.fire(hooks.MEMBER_STOPPING, socket.gethostname())
    except BaseException:
        logging.getLogger("jobtable.worker").exception("Worker %s crashed.", worker_id)
        code = 1
    finally:
        try:
            telemetry.flush()  # os._exit skips the SDK's atexit export
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
