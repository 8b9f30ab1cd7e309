"""Jobs whose outcome is hostile to a result row (importable by workers).

Every job first appends its tag to the file ``path`` (one atomic O_APPEND
line), so a test can count how often each one really ran; then it ends in a
way that used to crash the pool member after the job had run.
"""

from __future__ import annotations

from typing import Any

from jobtable import Job, register_job
from tests.worker_jobs import Log, append, lines, requests, results, start_worker, worker_env  # noqa: F401

HUGE = 20 * 1024 * 1024


class StrRaises(Exception):
    def __str__(self) -> str:
        raise TypeError("__str__ refuses")


class ReprRaises:
    def __repr__(self) -> str:
        raise ValueError("__repr__ refuses")

    def __str__(self) -> str:
        raise ValueError("__str__ refuses")


class NotesRaise(Exception):
    """traceback.format_exception itself raises on this one (Python 3.11)."""

    @property
    def __notes__(self) -> Any:
        raise RuntimeError("__notes__ refuses")


# A class name longer than the error_type column (255 characters).
LongName = type("L" * 400, (Exception,), {"__module__": __name__})


class _Poison(Job):
    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def run(self) -> Any:
        append(self.path, self.tag)
        return self.end()

    def end(self) -> Any:
        raise NotImplementedError


@register_job
class RaiseStrRaises(_Poison):
    def end(self) -> Any:
        raise StrRaises()


@register_job
class ReturnReprRaises(_Poison):
    def end(self) -> Any:
        return ReprRaises()


@register_job
class ReturnDeep(_Poison):
    def end(self) -> Any:
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        return value


@register_job
class ReturnCycle(_Poison):
    def end(self) -> Any:
        value: dict[str, Any] = {"name": "cycle"}
        value["self"] = value
        return value


@register_job
class RaiseNul(_Poison):
    def end(self) -> Any:
        raise ValueError("before\x00after")


@register_job
class RaiseSurrogate(_Poison):
    def end(self) -> Any:
        raise ValueError("lone \ud800 surrogate")


@register_job
class ReturnNulAndSurrogate(_Poison):
    def end(self) -> Any:
        return {"text": "nul\x00 and lone \udcff", "key\x00": 1}


@register_job
class RaiseHuge(_Poison):
    def end(self) -> Any:
        raise ValueError("x" * HUGE)


@register_job
class ReturnHuge(_Poison):
    def end(self) -> Any:
        return "y" * HUGE


@register_job
class RaiseNotesRaise(_Poison):
    def end(self) -> Any:
        raise NotesRaise("notes")


@register_job
class RaiseLongName(_Poison):
    def end(self) -> Any:
        raise LongName("long name")


@register_job
class RaiseLongChain(_Poison):
    """An exception with 10,000 chained contexts."""

    def end(self) -> Any:
        exc = ValueError("link 0")
        for i in range(1, 10_000):
            link = ValueError(f"link {i}")
            link.__context__ = exc
            exc = link
        raise exc


@register_job
class RaiseRefuseMe(_Poison):
    """Its error message matches the test trigger that refuses result rows."""

    def end(self) -> Any:
        raise ValueError("please refuse-me")


@register_job
class RefuseEverything(_Poison):
    """The test trigger refuses every result row of this job name, even the note."""

    def end(self) -> Any:
        return "fine"


POISON = [
    RaiseStrRaises,
    ReturnReprRaises,
    ReturnDeep,
    ReturnCycle,
    RaiseNul,
    RaiseSurrogate,
    ReturnNulAndSurrogate,
    RaiseHuge,
    ReturnHuge,
    RaiseNotesRaise,
    RaiseLongName,
    RaiseLongChain,
]


@register_job
class HeapFrozen(Job):
    """Returns how many objects the collector leaves alone in this process
    (``gc.get_freeze_count``), after building and dropping a 10,000-deep list,
    and whether ``sqlalchemy.orm`` was imported when the job started."""

    def run(self) -> list[Any]:
        import gc
        import sys

        # Before anything here can import it: the member inherited it.
        orm = "sqlalchemy.orm" in sys.modules
        value: list[Any] = []
        for _ in range(10_000):
            value = [value]
        del value
        return [gc.get_freeze_count(), orm]
