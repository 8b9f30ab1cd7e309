"""The job registry: registered names <-> Job classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from .exceptions import UnknownJob
from .jobbase import BaseJob
from .ratelimits import parse_rate

J = TypeVar("J", bound="type[BaseJob]")

_HOW_TO_REGISTER = (
    "Decorate the class with @register_job, and make sure the process imports its module "
    "(a jobs.py in a package listed in JOBTABLE_PACKAGES, or --app / JOBTABLE_APP)."
)


class JobRegistry:
    def __init__(self) -> None:
        self.jobs: dict[str, type[BaseJob]] = {}
        self._names: dict[type[BaseJob], str] = {}
        #: Tokens per second of each name whose class sets ``rate_limit``.
        self._rates: dict[str, float] = {}

    @staticmethod
    def default_name(job_class: type) -> str:
        return f"{job_class.__module__}.{job_class.__qualname__}"

    def register(self, job_class: J, alias: str = "") -> J:
        name = self.default_name(job_class)
        # Refused here, at @register_job, rather than by a worker later.
        rate = parse_rate(getattr(job_class, "rate_limit", None), f"{job_class.__qualname__}.rate_limit")
        existing = self.jobs.get(name)
        if existing is not None and existing is not job_class:
            # Re-importing a module (reload, tests) replaces the class.
            self._names.pop(existing, None)
        self.jobs[name] = job_class
        self._names[job_class] = name
        names = [name, alias] if alias else [name]
        for each in names:
            if rate is None:
                self._rates.pop(each, None)
            else:
                self._rates[each] = rate
        if alias:
            # An alias keeps messages enqueued under an old name runnable.
            self.jobs[alias] = job_class
        return job_class

    def rate_of(self, name: str) -> float | None:
        """Tokens per second of the Job registered as ``name`` (its class's
        ``rate_limit``), None without one."""
        return self._rates.get(name)

    def name_of(self, job_class: type[BaseJob]) -> str:
        try:
            return self._names[job_class]
        except KeyError:
            raise UnknownJob(f"{job_class.__qualname__} is not a registered job. {_HOW_TO_REGISTER}") from None

    def get(self, name: str) -> type[BaseJob]:
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(f"No job is registered as {name!r}. {_HOW_TO_REGISTER}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.jobs

    def names(self) -> list[str]:
        """Registered names, aliases excluded, sorted."""
        return sorted(set(self._names.values()))


jobs_registry = JobRegistry()


@overload
def register_job(job_class: J) -> J: ...
@overload
def register_job(job_class: None = None, *, alias: str = "") -> Callable[[J], J]: ...
def register_job(job_class: Any = None, *, alias: str = "") -> Any:
    """Register a Job class: ``@register_job`` or ``@register_job(alias="old.Name")``."""
    if job_class is None:
        return lambda cls: jobs_registry.register(cls, alias=alias)
    return jobs_registry.register(job_class)
