"""A counter shared by a worker's supervisor and its members: bumped when
the supervisor's Celery control listener stored a new rate limit
(``app.control.rate_limit``), or when its ``rates`` duty (duties.py) saw
the stored rates change (a broadcast another worker heard), so each member
re-reads the stored rates before its next take -- and never otherwise.

An anonymous shared mmap made at import, before the supervisor forks its
members (``process.py`` imports this module), is visible to all of them.
"""

from __future__ import annotations

import mmap

_mm = mmap.mmap(-1, 8)
_view = memoryview(_mm).cast("q")


def bump() -> None:
    _view[0] += 1


def current() -> int:
    return int(_view[0])
