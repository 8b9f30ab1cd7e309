"""Poison jobs for the poison-drain scenario (``bench/poison.py``, issue 12).

``jobtable --app benchapps.poison_jobs worker`` runs these and the no-op of
``jobtable_jobs`` (imported below, so one app module registers both).

Each poison job first appends one line ``<kind> <token> <pid>`` to the file
named by its ``path`` argument (one short O_APPEND write: atomic across the
pool members, and on disk before an ``os._exit``), then misbehaves.  The
scenario counts the lines to prove every poison job ran exactly once.
"""

from __future__ import annotations

import os

from jobtable import Job, register_job

from .jobtable_jobs import Noop  # noqa: F401  (registers Noop for this app)


def mark(path: str, kind: str, token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {token} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


class UnprintableError(Exception):
    """An exception whose ``__str__`` (and ``__repr__``) raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of UnprintableError raises")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of UnprintableError raises")


class Unrepresentable:
    """Not JSON-encodable, and its ``__repr__`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of Unrepresentable raises")

    __str__ = __repr__


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


class _Poison(Job):
    kind = "?"

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token

    def run(self) -> object:
        mark(self.path, self.kind, self.token)
        return self.misbehave()

    def misbehave(self) -> object:
        raise NotImplementedError


@register_job
class RaiseUnprintable(_Poison):
    kind = "raise-unprintable"

    def misbehave(self) -> object:
        raise UnprintableError("never shown")


@register_job
class ReturnUnrepresentable(_Poison):
    kind = "return-unrepresentable"

    def misbehave(self) -> object:
        return Unrepresentable()


@register_job
class ReturnDeep(_Poison):
    kind = "return-deep"

    def misbehave(self) -> object:
        return nested(10_000)


@register_job
class RaiseNulSurrogate(_Poison):
    kind = "raise-nul-surrogate"

    def misbehave(self) -> object:
        raise ValueError("before NUL \x00 after NUL, lone surrogate \ud800 end")


@register_job
class ExitProcess(_Poison):
    kind = "os-exit"

    def misbehave(self) -> object:
        os._exit(1)


#: The poison kinds run as jobs, by kind; "undecodable" rows are SQL-made.
KINDS = {cls.kind: cls for cls in (RaiseUnprintable, ReturnUnrepresentable, ReturnDeep, RaiseNulSurrogate, ExitProcess)}
