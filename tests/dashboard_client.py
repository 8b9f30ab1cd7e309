"""A TestClient for the dashboard that speaks its CSRF protocol."""

from __future__ import annotations

import warnings
from typing import Any

with warnings.catch_warnings():
    # Starlette suggests httpx2; httpx is what the test extra installs.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from jobtable.dashboard import create_app
from jobtable.dashboard.security import CSRF_COOKIE


class DashboardClient(TestClient):
    def csrf(self) -> str:
        if CSRF_COOKIE not in self.cookies:
            assert self.get("/workers").status_code == 200
        return str(self.cookies[CSRF_COOKIE])

    def act(self, action: str, ids: list[Any], *, confirmed: bool = True, next: str = "/", **extra: Any) -> Any:
        data: dict[str, Any] = {"csrf_token": self.csrf(), "ids": [str(i) for i in ids], "next": next, **extra}
        if confirmed:
            data["confirmed"] = "1"
        return self.post(f"/actions/{action}", data=data, follow_redirects=False)


def client(**options: Any) -> DashboardClient:
    options.setdefault("authorize", lambda request: True)
    options.setdefault("refresh_seconds", 0)
    kwargs = {k: options.pop(k) for k in ("client", "root_path", "base_url", "headers") if k in options}
    return DashboardClient(create_app(**options), **kwargs)
