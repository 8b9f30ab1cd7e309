"""Building a Job from a stored message and running it."""

from __future__ import annotations

from typing import Any

from . import params
from .jobbase import BaseJob
from .registry import jobs_registry


def instantiate(task_name: str, args: list[Any], kwargs: dict[str, Any]) -> BaseJob:
    """The Job a message describes, with its parameters decoded and any ORM
    instances loaded again (``ModelNotFound`` if one was deleted)."""
    job_class = jobs_registry.get(task_name)
    decoded_args = params.decode(args)
    decoded_kwargs = params.decode(kwargs)
    if params.contains_references(decoded_args) or params.contains_references(decoded_kwargs):
        with params.model_session() as session:
            where = f"{job_class.__qualname__} argument"
            decoded_args = params.resolve(decoded_args, session, where)
            decoded_kwargs = {
                key: params.resolve(value, session, f"{where} {key!r}") for key, value in decoded_kwargs.items()
            }
            job = job_class(*decoded_args, **decoded_kwargs)
            # Instances stay usable in run() after the session closes.
            session.expunge_all()
            return job
    return job_class(*decoded_args, **decoded_kwargs)
