"""Tasks found by ``app.autodiscover_tasks(["tests.shim_deferred_pkg"])``
(tests/shim_deferred_app.py), after the app read its beat schedule."""

from __future__ import annotations

from jobtable.shim import shared_task


@shared_task
def ping() -> str:
    return "pong"
