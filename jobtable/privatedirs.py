"""Directories only this user can write: where per-process ledgers live
(the native worker's, worker/ledger.py, and the transport's started-ledger,
transport/started.py).  A directory planted by another user in a shared
place such as /tmp is never used."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_dir(path: Path, create: bool) -> bool:
    """True when ``path`` is a directory of ours that nobody else can write
    (``create``: make it first, mode 0700, when it is missing)."""
    try:
        if create:
            path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    return not info.st_mode & 0o022
