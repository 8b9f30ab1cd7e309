"""The dashboard's configuration, as ``create_app`` fixed it, and how a
request finds it.  At the bottom of the dashboard: the app, the pages and
the actions all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request

from . import hosts, security


@dataclass(frozen=True)
class DashboardConfig:
    authorize: security.Authorize
    read_only: bool
    database_url: str | None
    #: Seconds between live refreshes of a page (0: off).
    refresh_seconds: float
    #: A worker without a heartbeat for this long is shown as stale.
    stale_after: timedelta
    title: str
    #: Which Host names are served and which Origins may POST.
    hosts: hosts.HostPolicy


def config_of(request: Request) -> DashboardConfig:
    return request.app.state.config  # type: ignore[no-any-return]
