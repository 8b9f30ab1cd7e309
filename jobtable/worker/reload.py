"""``--reload``: run the worker in a child process and restart it when a
``.py`` or ``.env*`` file changes under the working directory (watchfiles)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger("jobtable.worker")


def _watched(change: object, path: str) -> bool:
    name = Path(path).name
    if "/.venv/" in path or "/__pycache__/" in path or "/.git/" in path:
        return False
    return name.endswith(".py") or name.startswith(".env")


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    # Its own process group: Ctrl-C reaches the reloader only, which passes
    # on exactly one SIGINT.  In the terminal's group the worker got two (the
    # terminal's, then the reloader's), and a second SIGINT is the worker's
    # "stop now": running jobs were killed instead of finishing.
    return subprocess.Popen(command, process_group=0)


def _stop(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT (the worker's graceful stop), then SIGKILL past the grace; a
    second Ctrl-C meanwhile is passed on (the worker's "stop now")."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace + 5
    while True:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
            return
        except subprocess.TimeoutExpired:
            logger.warning("The worker did not stop within %gs of SIGINT: killing it.", grace + 5)
            child.kill()
            child.wait()
            return
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def run_with_reload(argv: list[str], grace: float) -> int:
    """Run ``jobtable <argv>`` (without --reload), restarting it on changes;
    SIGINT or SIGTERM stops it gracefully (up to ``grace`` + 5 s)."""
    import watchfiles

    command = [sys.executable, "-c", "from jobtable.cli import main; main()", *argv]
    signal.signal(signal.SIGTERM, _interrupt)
    logger.info("Watching %s for .py and .env changes.", os.getcwd())
    child = _start(command)
    try:
        for changes in watchfiles.watch(os.getcwd(), watch_filter=_watched, raise_interrupt=False):
            logger.info("Changes detected (%d file(s)); restarting the worker.", len(changes))
            _stop(child, grace)
            child = _start(command)
    finally:
        _stop(child, grace)
    return 0
