"""Errors jobtable raises on purpose.  Each message names the problem and the fix."""

from __future__ import annotations


class JobtableError(Exception):
    """Base class of jobtable's own errors."""


class ConfigurationError(JobtableError):
    """A setting or URL is wrong."""


class DatabaseUnavailable(JobtableError):
    """The database cannot be reached."""


class SchemaNotMigrated(JobtableError):
    """The database has no jobtable tables, or older ones than this version needs."""


class SchemaTooNew(SchemaNotMigrated):
    """The database was migrated by a newer jobtable than this one (an unknown schema revision)."""


class UnknownJob(JobtableError, LookupError):
    """A job name that no ``@register_job`` registered."""


class EnqueueError(JobtableError, ValueError):
    """An enqueue or publish was given something it cannot store: an option
    (delay, priority, queue...), a header, or a message too large.  Nothing
    was stored."""


class ParameterError(EnqueueError, TypeError):
    """A job argument that jobtable cannot store, or a stored one it cannot
    read back.  Also a TypeError, what it was before it became an EnqueueError."""


class MessageTooLarge(EnqueueError):
    """The message is larger than the ``max_message_size`` setting."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class ModelNotFound(JobtableError, LookupError):
    """An ORM instance passed as a job parameter was deleted before the job ran."""


class UnknownModel(JobtableError, LookupError):
    """An ORM reference in a job message names no model this process has loaded."""


class JobNotFound(JobtableError, LookupError):
    """No request or result has the given uuid."""


class JobStateError(JobtableError, RuntimeError):
    """The job is not in a state the operation accepts: cancelling a running
    job, retrying one that is waiting, running or already retried."""


class RateLimitError(ConfigurationError, ValueError):
    """A ``rate_limit`` value that is not a rate (raised where it is declared:
    ``@register_job``, ``@app.task``, ``task_default_rate_limit``, worker start)."""
