"""Tasks: the ``Task`` base class (calling a task, ``self.request``,
``self.retry()``, ``autoretry_for``) and ``TaskJob``, the Job that carries a
task through jobtable.

A task is registered under Celery's name for it (``module.function``, or
``name=``), so rows sent by Celery and by the shim are interchangeable (see
``decorators.py``, which makes tasks of functions).  Each task also gets a
``TaskJob`` subclass (``task.job_class``) whose ``job_name()`` is that name:
jobtable's scheduler enqueues beat entries through it, and the native worker
runs the task through it (``runner.py`` builds it from the message).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.engine import Connection

from .. import messages, params, safetext
from ..db import clock as db_clock
from ..records import JobRequest
from ..jobs import Job
from ..middleware import current_job
from ..worker.errors import JobTimeout
from . import errbacks, followups, progress, signals
from .canvas import Signature
from .context import Context
from .current import App, current_app
from .exceptions import Ignore, MaxRetriesExceededError, NotSupported, Retry, TaskRevokedError
from . import maps
from .result import AsyncResult, EagerResult
from .send import build_row, check_options, encode_args, insert_rows, route
from .states import FAILURE, SUCCESS
from .trace import backoff_interval, traced  # noqa: F401  (backoff_interval: re-exported)

logger = logging.getLogger("jobtable.shim")


def _call_arguments(name: str, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` of apply_async and apply, refused as Celery does
    when they are not a list/tuple and a dict: ``tuple("ab")`` would send
    the task two arguments 'a' and 'b'."""
    if args is not None and (isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple))):
        raise TypeError(f"{name}: args must be a list or tuple, got {type(args).__name__}.")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{name}: kwargs must be a dict, got {type(kwargs).__name__}.")
    return tuple(args or ()), dict(kwargs or {})


class Task:
    """Base class of tasks; ``@app.task(base=MyTask)`` subclasses it."""

    name: str = ""
    #: The app of ``@app.task``; None for ``@shared_task`` (``app`` is then the current one).
    _bound_app: App | None = None
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | int = False
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    queue: str | None = None
    priority: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: float | datetime | None = None
    ignore_result: bool = False
    #: Celery's pair (None: the app's task_acks_late / task_reject_on_worker_lost):
    #: with both, a task whose worker process dies mid-run is run again once.
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool = False
    serializer: str = "json"
    throws: tuple[type[BaseException], ...] = ()
    #: jobtable extension: a string, or a callable of the task's arguments
    #: returning one; at most one waiting-or-running task per (name, key).
    concurrency_key: str | Callable[..., str] | None = None
    #: Celery's rate_limit ("10/m", "5/s", a number per second; None: the
    #: app's task_default_rate_limit), enforced by the database across every
    #: worker -- Celery enforces it per worker (db/ratelimit_sql.py).
    rate_limit: str | int | float | None = None
    #: The Job subclass that carries this task through jobtable (set per task).
    job_class: type[TaskJob]

    def __init__(self) -> None:
        self._requests = threading.local()

    # -- what the task does --------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"Task {self.name!r} has no run().")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the task runs it here and now, like a function."""
        self.push_request(Context(id=None, task=self.name, args=args, kwargs=kwargs, called_directly=True))
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()

    def __repr__(self) -> str:
        return f"<@task: {self.name} (jobtable.shim)>"

    # -- self.request ------------------------------------------------------------------

    @property
    def request(self) -> Context:
        stack = getattr(self._requests, "stack", None)
        return stack[-1] if stack else Context()

    def push_request(self, request: Context | None = None, **fields: Any) -> None:
        stack = self._requests.__dict__.setdefault("stack", [])
        stack.append(request if request is not None else Context(**fields))

    def pop_request(self) -> None:
        self._requests.stack.pop()

    # -- handlers (override in a base class) -------------------------------------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        pass

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        pass

    # -- sending -----------------------------------------------------------------------

    @property
    def app(self) -> App:
        """The task's app, as in Celery: its own (``@app.task``), else the
        current one (``@shared_task``), so ``self.app.conf`` works in both."""
        return self._bound_app or current_app()

    def _app(self) -> App:
        return self.app

    def requeues_on_lost(self) -> bool:
        """Celery's ``acks_late`` + ``reject_on_worker_lost``: a lost attempt is run again once."""
        conf = self._app().conf
        acks_late, reject = self.acks_late, self.reject_on_worker_lost
        if acks_late is None:
            acks_late = conf.get("task_acks_late")
        if reject is None:
            reject = conf.get("task_reject_on_worker_lost")
        return bool(acks_late and reject)

    def check_arguments(self, args: Any, kwargs: Any) -> None:
        """Celery's ``typing``: a call that does not fit the signature fails when sent."""
        if not self.typing:
            return
        try:
            signature = inspect.signature(self.run)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | EagerResult | None:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult | EagerResult | None:
        """Send the task.  Returns its AsyncResult (an EagerResult with
        ``task_always_eager``), or None when its concurrency key is taken."""
        args, kwargs = _call_arguments(self.name, args, kwargs)
        self.check_arguments(args, kwargs)
        check_options(options)
        app = self._app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, link=options.get("link"), link_error=options.get("link_error"))
        sent: AsyncResult | None = Signature(
            self.name, args, kwargs, {**options, "task_id": task_id} if task_id else options, app=app
        ).apply_async()
        return sent

    def apply(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        retries: int = 0,
        throw: bool | None = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task here and now (``task_always_eager``).  The arguments go
        through JSON as they would through the queue, so a task that cannot
        be sent fails in tests too.  ``retry()`` runs it again at once."""
        args, kwargs = _call_arguments(self.name, args, kwargs)
        task_id = task_id or messages.new_task_id()
        encoded_args, encoded_kwargs = encode_args(args, kwargs, self.name)
        args, kwargs = tuple(params.decode(encoded_args)), params.decode(encoded_kwargs)
        propagate = self._app().conf.task_eager_propagates if throw is None else throw
        while True:
            request = Context(
                id=task_id,
                task=self.name,
                args=args,
                kwargs=kwargs,
                retries=retries,
                is_eager=True,
                called_directly=False,
                root_id=options.get("root_id") or task_id,
                parent_id=options.get("parent_id"),
                delivery_info={"is_eager": True},
                errbacks=errbacks.as_dicts(link_error),
            )
            try:
                value = traced(self, request)
            except Retry:
                retries += 1
                continue
            except Ignore as replaced:
                # raise self.replace(sig) in eager mode: sig ran here; its value is the task's.
                value = getattr(replaced, "value", None)
            except Exception as exc:
                if request.errbacks:
                    errbacks.call_errbacks(request, exc, eager=True)
                if propagate:
                    raise
                return EagerResult(task_id, exc, FAILURE, traceback=safetext.format_traceback(exc), name=self.name)
            for sig in link if isinstance(link, (list, tuple)) else [link] if link else []:
                sig.apply((value,), parent_id=task_id, root_id=request.root_id)
            return EagerResult(task_id, value, SUCCESS, name=self.name)

    # -- canvas ------------------------------------------------------------------------

    def signature(self, args: Any = None, kwargs: Any = None, *starargs: Any, **options: Any) -> Signature:
        return Signature(self.name, args or (), kwargs or {}, options, app=self._app())

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802  (Celery's name)
        return AsyncResult(task_id, app=self._app(), task_name=self.name, **kwargs)

    # -- retrying ----------------------------------------------------------------------

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Run this task again (same id, ``request.retries + 1``) after
        ``countdown`` seconds (default ``default_retry_delay``).  With no
        retries left, raises ``exc`` (or MaxRetriesExceededError).  Always
        raises: ``raise self.retry(...)`` reads as in Celery."""
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            raise RuntimeError(f"Task {self.name} was called directly, not by a worker: it cannot be retried.")
        if (
            args is not None
            and tuple(args) != tuple(request.args)
            or kwargs is not None
            and dict(kwargs) != dict(request.kwargs)
        ):
            raise NotSupported(
                "retry(args=..., kwargs=...) with new arguments",
                "A retry runs the same message again. Send a new task instead: "
                "self.apply_async(new_args, countdown=...).",
            )
        if options:
            raise NotSupported(
                f"retry({', '.join(sorted(options))}=...)",
                "A retry keeps the message's queue and priority. Supported: countdown, eta, max_retries, exc.",
            )
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args,
                task_kwargs=request.kwargs,
            )
        if countdown is None:
            if eta is not None:
                eta = eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)
                countdown = max(0.0, (eta - db_clock.utcnow()).total_seconds())
            else:
                countdown = self.default_retry_delay
        raise Retry(countdown=timedelta(seconds=max(0.0, float(countdown))), exc=exc)

    # -- maps (Celery's built-in map tasks, maps.py) ------------------------------------

    def map(self, it: Any) -> maps.xmap:
        """``[task(x) for x in it]`` in one worker, as one message."""
        return maps.xmap(self.s(), it, app=self._app())

    def starmap(self, it: Any) -> maps.xstarmap:
        """``[task(*x) for x in it]`` in one worker, as one message."""
        return maps.xstarmap(self.s(), it, app=self._app())

    def chunks(self, it: Any, n: int) -> maps.chunks:
        """A group of starmap messages of ``n`` items each."""
        return maps.chunks(self.s(), it, n, app=self._app())

    # -- not supported -------------------------------------------------------------------

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """A custom state (``"PROGRESS"``) and its ``meta``, read by
        ``AsyncResult(id).state`` and ``.info`` while the task runs (progress.py)."""
        if kwargs:
            raise TypeError(f"update_state() got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        progress.store(self.request, self.name, task_id, state, meta)

    def replace(self, sig: Any) -> Any:
        """Celery's ``raise self.replace(sig)``: ``sig`` takes this task's id
        and what followed it (chain, callbacks, chord part); this attempt
        ends without a result (``Ignore``).  Eager: ``sig`` runs now and its
        value is the task's (Celery returns it, so ``raise`` fails there)."""
        if getattr(sig, "subtask_type", None) not in (None, "chain") or not hasattr(sig, "to_dict"):
            raise NotSupported(
                f"replace() with {sig!r}", "Replace a task with a task signature or a chain (task.s(...) | ...)."
            )
        request = self.request
        if request.called_directly:
            raise RuntimeError(f"Task {self.name} was called directly, not by a worker: it cannot be replaced.")
        if request.is_eager:
            replaced = Ignore("Replaced by new task")
            replaced.value = sig.apply().get()  # type: ignore[attr-defined]
            raise replaced
        followups.replace(request, sig)
        raise Ignore("Replaced by new task")

    def add_to_chord(self, sig: Any, lazy: bool = False) -> Any:
        """Add ``sig`` to the chord this task is a part of (its value comes
        last in the body's list); returns its AsyncResult."""
        if lazy:
            raise NotSupported(
                "add_to_chord(lazy=True)", "Let add_to_chord() send the signature (lazy=False, the default)."
            )
        return followups.add_to_chord(self.request, sig)

    def send_event(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupported("task events", "Use logging, or jobtable's OpenTelemetry instrumentation.")


class TaskJob(Job):
    """The Job that carries a shim task: ``job_name()`` is the task's name.

    Not in jobtable's job registry on purpose: the worker would then build it
    from the message's arguments alone, and the task needs the message's
    headers (id, retries, group, chain) -- the runner builds it instead.
    """

    task: Task
    #: Set by the runner: the message being executed.
    _call: messages.TaskCall | None = None
    #: Set by the runner: the message's canvas steps (callbacks, chain, chord).
    _embed: dict[str, Any] = {}
    #: Set for beat entries: their ``options`` (queue, priority).
    _entry_options: dict[str, Any] = {}
    #: Set by the runner: the claim found the task revoked.
    _revoked: bool = False
    _expired: bool = False  # revoked because it expired before a worker received it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    @classmethod
    def job_name(cls) -> str:
        return cls.task.name

    def default_queue(self) -> str:
        app = self.task._app()
        return route(app, self.task.name, self.task, self.args, self.kwargs, self._entry_options)

    def default_priority(self) -> int:
        priority = self._entry_options.get("priority", self.task.priority)
        if priority is None:
            priority = self.task._app().conf.task_default_priority or 0
        return int(priority)

    def default_concurrency_key(self) -> str:
        key = self.task.concurrency_key
        if callable(key):
            return str(key(*self.args, **self.kwargs))
        return key or ""

    def run_in_worker(self, **options: Any) -> JobRequest | None:
        """Enqueue through the shim's send path, so a beat entry's message is
        the one celery beat would send (``apply_async``), with
        ``before_task_publish``/``after_task_publish``.  Options the shim's
        path has no counterpart for go through the Job API as before."""
        connection = options.pop("connection", None)
        concurrency_key = options.pop("concurrency_key", None)
        queue, priority = options.pop("queue", None), options.pop("priority", None)
        if any(value not in (None, 0) for value in options.values()) or not (
            connection is None or isinstance(connection, Connection)
        ):
            return super().run_in_worker(
                connection=connection, concurrency_key=concurrency_key, queue=queue, priority=priority, **options
            )
        task = self.task
        sent: dict[str, Any] = {k: self._entry_options[k] for k in ("queue", "priority") if k in self._entry_options}
        if queue is not None:
            sent["queue"] = queue
        if priority is not None:
            sent["priority"] = priority
        if concurrency_key:
            sent["concurrency_key"] = concurrency_key
        args, kwargs = encode_args(self.args, self.kwargs, task.name)
        row = build_row(task._app(), task.name, args, kwargs, sent, now=db_clock.utcnow())
        inserted = insert_rows([row], connection)
        if row["task_id"] not in inserted:
            return None  # its concurrency key is taken
        return JobRequest.from_row(SimpleNamespace(id=inserted[row["task_id"]], **row))

    def run(self) -> Any:
        """Run the task as the native worker does: with the message's
        ``self.request``, its handlers, then what follows it (``followups.py``).
        ``self.retry()`` raises ``Retry``, a ``DeferJob``: the worker records
        the attempt DEFERRED and enqueues attempt + 1 of the same task id."""
        task = self.task
        request = self._message_request()
        if self._revoked:
            # Revoked before it ran (runner.py recorded it REVOKED): as a
            # Celery worker that receives a revoked task, never run it.
            reason = "expired" if self._expired else "revoked"
            signals.task_revoked.send(
                sender=task, request=request, terminated=False, signum=None, expired=self._expired
            )
            if request.chord and request.group:
                followups.count_failed_part(request, f"TaskRevokedError({reason!r})")
            if request.chain:
                followups.fail_chain_members(request, TaskRevokedError(reason), f"TaskRevokedError({reason!r})")
            raise TaskRevokedError(reason)

        def encode(value: Any) -> Any:
            # Encoded before success is declared: a value the next step cannot receive fails this task.
            if followups.has_followers(request):
                return params.encode(value, f"the return value of {task.name}")
            return None

        try:
            try:
                value, encoded = traced(task, request, encode)
            finally:
                progress.clear(request)  # before the worker writes the attempt's own row
        except (Retry, Ignore):
            raise  # retried, or replaced: what follows goes with the next attempt
        except BaseException as exc:
            if request.chord and request.group:
                followups.count_failed_part(request, f"{type(exc).__name__}({str(exc)!r})")
            if request.chain:
                followups.fail_chain_members(request, exc, f"{type(exc).__name__}({str(exc)!r})")
            if request.errbacks and isinstance(exc, (Exception, JobTimeout)):
                errbacks.call_errbacks(request, exc)
            raise
        if followups.has_followers(request):
            followups.follow(request, encoded)
        return value

    def _message_request(self) -> Context:
        """``self.request`` of the task while this job runs: from the
        message's headers and canvas steps (set by the runner)."""
        call = self._call
        if call is None:  # run() called outside a worker
            return Context(task=self.task.name, args=self.args, kwargs=self.kwargs, called_directly=False)
        h = call.headers
        embed = self._embed
        running = current_job()
        return Context(
            id=call.task_id,
            task=call.task_name,
            args=self.args,
            kwargs=self.kwargs,
            retries=int(h.get("retries") or 0),
            is_eager=False,
            eta=h.get("eta"),
            expires=h.get("expires"),
            headers=h,
            root_id=h.get("root_id"),
            parent_id=h.get("parent_id"),
            group=h.get("group"),
            group_index=h.get("group_index"),
            chord=embed.get("chord"),
            chain=embed.get("chain"),
            callbacks=embed.get("callbacks"),
            errbacks=embed.get("errbacks"),
            delivery_info={"routing_key": running.queue, "priority": running.priority} if running else {},
            hostname=running.worker_id if running else None,
            origin=h.get("origin"),
            shadow=h.get("shadow"),
            timelimit=tuple(h.get("timelimit") or (None, None)),
            called_directly=False,
        )
