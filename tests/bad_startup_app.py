"""Broken start-up pieces for tests/test_settings_validation.py: imported
only by the worker subprocesses of those tests (``--app`` or a setting)."""

from __future__ import annotations

from jobtable import Job, register_job

#: Not a middleware class: JOBTABLE_MIDDLEWARE=tests.bad_startup_app.NOT_A_CLASS.
NOT_A_CLASS = 42


@register_job
class BlankSchedule(Job):
    """A schedule attribute that is blank: an error, not "every minute"."""

    schedule = "   "

    def run(self) -> None:
        return None
