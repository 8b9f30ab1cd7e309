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
    """``run_in_worker`` was given an option it cannot store."""


class ModelNotFound(JobtableError, LookupError):
    """An ORM instance passed as a job parameter was deleted before the job ran."""


class JobNotFound(JobtableError, LookupError):
    """No request or result has the given uuid."""
