"""``self.request``: what a task sees of the call being executed.

Built by the eager ``apply()``, by the native worker from a message's
headers (``TaskJob``), and read by the steps that follow a task
(``followups.py``: chain, callbacks, chord); it sits below all of them.
"""

from __future__ import annotations

from typing import Any


class Context:
    """``self.request``: the call being executed."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    retries: int = 0
    is_eager: bool = False
    eta: str | None = None
    expires: str | None = None
    headers: dict[str, Any] | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: dict[str, Any] | None = None
    chain: list[dict[str, Any]] | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    delivery_info: dict[str, Any] = {}
    hostname: str | None = None
    origin: str | None = None
    shadow: str | None = None
    timelimit: tuple[Any, Any] = (None, None)
    called_directly: bool = True
    ignore_result: bool = False
    reply_to: str | None = None

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
        self.correlation_id = self.id

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __repr__(self) -> str:
        return f"<Context: {self.__dict__!r}>"
