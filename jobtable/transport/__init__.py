"""The Kombu transport: Celery and any Kombu client use the queue table as
their broker (``jobtable+postgresql+psycopg://...``, ``jobtable+sqlite:///...``).

``import jobtable`` calls ``register()``, so these URLs work with no other
setting.  The class is ``jobtable.transport:Transport``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Transport", "register"]

TRANSPORT_PATH = "jobtable.transport:Transport"

#: Whole schemes, for Kombu's failover, which looks up the full URL scheme
#: ("jobtable+postgresql+psycopg") as a transport name.
SCHEMES = (
    "jobtable",
    "jobtable+postgresql",
    "jobtable+postgresql+psycopg",
    "jobtable+postgres",
    "jobtable+sqlite",
    "jobtable+mysql",
    "jobtable+mysql+mysqldb",
    "jobtable+mysql+pymysql",
    "jobtable+mariadb",
    "jobtable+mariadb+mysqldb",
    "jobtable+mariadb+pymysql",
)


def register() -> None:
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in SCHEMES:
        TRANSPORT_ALIASES.setdefault(scheme, TRANSPORT_PATH)


def __getattr__(name: str) -> Any:
    # Lazy, so ``import jobtable`` does not load Kombu's virtual transport.
    if name == "Transport":
        from .transport import Transport

        return Transport
    raise AttributeError(name)
