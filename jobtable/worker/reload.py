"""``--reload``: run the worker in a child process and restart it when a
``.py`` or ``.env*`` file changes under the working directory (watchfiles)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

logger = logging.getLogger("jobtable.worker")


def _watched(change: object, path: str) -> bool:
    name = Path(path).name
    if "/.venv/" in path or "/__pycache__/" in path or "/.git/" in path:
        return False
    return name.endswith(".py") or name.startswith(".env")


def run_with_reload(argv: list[str], grace: float) -> int:
    """Run ``jobtable <argv>`` (without --reload), restarting it on changes."""
    import watchfiles

    command = shlex.join([sys.executable, "-c", "from jobtable.cli import main; main()", *argv])
    logger.info("Watching %s for .py and .env changes.", os.getcwd())
    watchfiles.run_process(
        os.getcwd(),
        target=command,
        target_type="command",
        watch_filter=_watched,
        sigint_timeout=int(grace) + 5,
        callback=lambda changes: logger.info("Changes detected (%d file(s)); restarting the worker.", len(changes)),
    )
    return 0
