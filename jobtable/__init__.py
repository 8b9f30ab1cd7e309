"""jobtable: a background job queue kept in a SQL table.

Three doors into one queue: the Job API (this module), the Kombu transport
(``jobtable+postgresql+psycopg://`` broker URLs) and the Celery shim.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import params as _params  # noqa: E402
from . import transport as _transport  # noqa: E402
from .enqueue import run_in_worker_many
from .exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    EnqueueError,
    JobNotFound,
    JobStateError,
    JobtableError,
    ModelNotFound,
    RateLimitError,
    SchemaNotMigrated,
    UnknownJob,
)
from .jobs import DeferJob, Job, JobRequest
from .records import JobProcess, JobResult
from .registry import jobs_registry, register_job
from .settings import configure, get_settings

# Importing jobtable is what makes Celery and Kombu understand it: the JSON
# markers of job parameters, and the jobtable+... broker URLs.
_params.register_with_kombu()
_transport.register()

__all__ = [
    "ConfigurationError",
    "DeferJob",
    "DatabaseUnavailable",
    "EnqueueError",
    "Job",
    "RateLimitError",
    "JobNotFound",
    "JobProcess",
    "JobRequest",
    "JobResult",
    "JobStateError",
    "JobtableError",
    "ModelNotFound",
    "SchemaNotMigrated",
    "UnknownJob",
    "configure",
    "get_settings",
    "jobs_registry",
    "register_job",
    "run_in_worker_many",
]
