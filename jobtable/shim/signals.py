"""``jobtable.shim.signals``: Celery's signals, with Celery's names, senders
and keyword arguments, so that handlers written for ``celery.signals`` move
unchanged (``@task_failure.connect``, ``connect(sender=task)``, ``weak=``,
``dispatch_uid=``).

``Signal`` follows Celery's ``celery.utils.dispatch.Signal`` (5.7): a
receiver must accept ``**kwargs``; it is held by a weak reference unless
``weak=False`` (a handler defined inside a function goes away with it, as in
Celery); ``send`` calls every live receiver whose sender matches (None:
any), logs what a receiver raises and returns ``[(receiver, response or
exception)]`` -- a broken handler never changes how a task is recorded.

Who sends what (the shim's worker path: the native worker running shim
tasks, and ``apply()``/``task_always_eager``, which Celery traces too):

===================== ============== ===========================================================
signal                sender         keyword arguments
===================== ============== ===========================================================
before_task_publish   task name      body, exchange, routing_key, headers, properties, declare,
                                     retry_policy (``headers``/``body`` may be changed in place)
after_task_publish    task name      body, exchange, routing_key, headers, properties
task_prerun           task           task_id, task, args, kwargs
task_success          task           result, runtime
task_failure          task           task_id, exception, args, kwargs, traceback, einfo
task_retry            task           request, reason, einfo
task_postrun          task           task_id, task, args, kwargs, retval, state
task_revoked          task           request, terminated, signum, expired
worker_process_init   hostname       (a forked pool member, before it takes jobs)
worker_ready          worker         (``sender.hostname``, ``sender.app``)
worker_shutdown       worker         (the supervisor, once its members have stopped)
===================== ============== ===========================================================
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

logger = logging.getLogger("jobtable.shim")

_NONE_ID: Any = None  # the key of "any sender"


def _make_id(target: Any) -> Any:
    """Celery's key of a receiver or a sender: strings by value (a task name),
    bound methods by (instance, function), anything else by identity."""
    if target is None:
        return _NONE_ID
    if isinstance(target, (bytes, str)):
        return target
    if hasattr(target, "__func__"):
        return (id(getattr(target, "__self__", None)), id(target.__func__))
    return id(target)


def _accepts_kwargs(fun: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin or C callable: cannot tell, let it through as Celery does
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Signal:
    """One signal: ``connect``, ``disconnect``, ``send``, as Celery's."""

    def __init__(self, name: str, providing_args: set[str] | None = None) -> None:
        self.name = name
        self.providing_args = set(providing_args or ())
        #: ``[((receiver key, sender key), receiver or weakref)]``, in connection order.
        self.receivers: list[tuple[tuple[Hashable, Hashable], Any]] = []
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal: {self.name} providing_args={self.providing_args!r} (jobtable.shim)>"

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        """``sig.connect(handler, sender=None, weak=True, dispatch_uid=None)``,
        or as a decorator: ``@sig.connect`` / ``@sig.connect(sender=task)``."""

        def options(
            sender: Any = None, weak: bool = True, dispatch_uid: Hashable | None = None, retry: bool = False
        ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            if retry:
                from .exceptions import NotSupported

                raise NotSupported(
                    f"{self.name}.connect(retry=True)", "Retry inside the handler (a failing handler is logged)."
                )

            def do_connect(fun: Callable[..., Any]) -> Callable[..., Any]:
                self._connect(fun, sender, weak, dispatch_uid)
                return fun

            return do_connect

        if args and callable(args[0]):
            return options(*args[1:], **kwargs)(args[0])
        return options(*args, **kwargs)

    def _connect(self, receiver: Callable[..., Any], sender: Any, weak: bool, dispatch_uid: Hashable | None) -> None:
        if not callable(receiver):
            raise TypeError(f"{self.name}.connect: the receiver {receiver!r} is not callable.")
        if not _accepts_kwargs(receiver):
            raise ValueError(
                f"{self.name}.connect: the receiver {getattr(receiver, '__qualname__', receiver)!r} must accept "
                "keyword arguments (def handler(sender=None, **kwargs): ...)."
            )
        key = (dispatch_uid if dispatch_uid is not None else _make_id(receiver), _make_id(sender))
        held: Any = receiver
        if weak:
            held = weakref.WeakMethod(receiver) if hasattr(receiver, "__func__") else weakref.ref(receiver)
        with self.lock:
            self._drop_dead()
            if all(existing != key for existing, _ in self.receivers):
                self.receivers.append((key, held))

    def disconnect(
        self, receiver: Any = None, sender: Any = None, weak: Any = None, dispatch_uid: Hashable | None = None
    ) -> bool:
        key = (dispatch_uid if dispatch_uid is not None else _make_id(receiver), _make_id(sender))
        with self.lock:
            for index, (existing, _) in enumerate(self.receivers):
                if existing == key:
                    del self.receivers[index]
                    return True
        return False

    def _drop_dead(self) -> None:
        self.receivers[:] = [
            (key, held) for key, held in self.receivers if not (isinstance(held, weakref.ref) and held() is None)
        ]

    def _live_receivers(self, sender: Any) -> list[Callable[..., Any]]:
        wanted = _make_id(sender)
        live: list[Callable[..., Any]] = []
        with self.lock:
            self._drop_dead()
            for (_, sender_key), held in self.receivers:
                if sender_key == _NONE_ID or sender_key == wanted:
                    fun = held() if isinstance(held, weakref.ref) else held
                    if fun is not None:
                        live.append(fun)
        return live

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._live_receivers(sender))

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call the receivers; what one raises is logged and returned, never raised."""
        responses: list[tuple[Callable[..., Any], Any]] = []
        if not self.receivers:
            return responses
        for receiver in self._live_receivers(sender):
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception("Signal handler %r of %s raised: %r", receiver, self.name, exc)
                responses.append((receiver, exc))
            else:
                responses.append((receiver, response))
        return responses

    send_robust = send  # Django's name; the same in Celery


before_task_publish = Signal(
    "before_task_publish",
    {"body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"},
)
after_task_publish = Signal("after_task_publish", {"body", "exchange", "routing_key"})
task_prerun = Signal("task_prerun", {"task_id", "task", "args", "kwargs"})
task_postrun = Signal("task_postrun", {"task_id", "task", "args", "kwargs", "retval"})
task_success = Signal("task_success", {"result", "runtime"})
task_retry = Signal("task_retry", {"request", "reason", "einfo"})
task_failure = Signal("task_failure", {"task_id", "exception", "args", "kwargs", "traceback", "einfo"})
task_revoked = Signal("task_revoked", {"request", "terminated", "signum", "expired"})
worker_process_init = Signal("worker_process_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
]
