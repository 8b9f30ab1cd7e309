"""The jobs dashboard: a Starlette app to watch and operate the queue.

Install with ``pip install jobtable[dashboard]``, then mount
``create_app()`` in your ASGI app or run ``jobtable dashboard``.
"""

from __future__ import annotations

from .app import create_app
from .config import DashboardConfig
from .security import basic_auth, is_loopback, token_auth

__all__ = ["DashboardConfig", "basic_auth", "create_app", "is_loopback", "token_auth"]
