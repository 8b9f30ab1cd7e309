"""Celery tasks on the native worker, through Celery's own tracer.

``jobtable worker --celery-app proj.celery:app`` (or ``JOBTABLE_CELERY_APP``)
calls ``install("proj.celery:app")`` before the pool starts.  From then on a
claimed row whose task name is registered in that Celery app is run by
``celery.app.trace.trace_task`` with the request a Celery worker would build
from the same message (headers, the body's embed -- callbacks, errbacks,
chain, chord -- and the delivery info).  So Celery does what it does under its
own worker: signals, ``bind=True``, ``self.retry()`` (its retry message is
published through the app's broker: with the jobtable broker it becomes the
next attempt's row), ``autoretry_for``, link/link_error, chains, groups and
chords (counted by the app's result backend), results stored by the backend.

What the native worker adds around the tracer:

- one result row per attempt: the tracer's backend writes (task_id, attempt)
  first; the worker's own insert of the same attempt is then skipped (ON
  CONFLICT DO NOTHING), so the two never disagree.  Celery rows carry no
  jobtable retry budget, so the worker never enqueues a retry of its own: a
  retry exists only if Celery published one;
- ``time_limit`` is the job's timeout (JobTimeout; the backend is told
  TimeLimitExceeded so chords end); ``soft_time_limit`` raises
  SoftTimeLimitExceeded inside the task;
- ``rate_limit`` (or ``task_default_rate_limit``) is enforced by the
  database across every worker (``db/ratelimit_sql.py``): a row without a
  token waits, scheduled, while the member runs other work -- not a token
  bucket per pool member, as under a Celery worker;
- ``expires`` is checked by the worker before it prepares a row (CANCELLED,
  which AsyncResult reports as REVOKED);
- ``app.control.revoke(id)`` is recorded in ``jobtable_revoke`` (by the
  jobtable broker at publish, and by the worker's control node): a revoked
  task claimed later is recorded REVOKED and never starts.  The worker
  answers Celery's remote control as one node (``celery_control.py``);
- a concurrency key (``apply_async(headers={"concurrency_key": ...})`` or the
  ``concurrency_key=`` task option, see ``use_concurrency_key_option``) has
  the Job API's meaning; a keyed task's ``self.retry()`` is held back from
  the broker and enqueued by the worker when the key is freed.

Celery is imported only here, and this module only when --celery-app is
given: jobtable without Celery never imports it.
"""

from __future__ import annotations

import inspect
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..db import clock as db_clock
from ..db import engine as db_engine
from ..db import revokes_sql
from ..exceptions import ConfigurationError
from ..messages import CONCURRENCY_KEY_HEADER, TaskCall, parse_time
from ..ratelimits import parse_rate
from ..middleware import current_job
from ..worker import dispatch
from ..worker.errors import DeferJob, JobTimeout
from ..worker.timeouts import raise_in_thread

logger = logging.getLogger("jobtable.celery")

#: The Celery app whose tasks this process runs (set by ``install``).
_app: Any = None


@dataclass
class _Held:
    """A keyed attempt's own retry, held back from the broker (see ``_hold_retries``)."""

    task_id: str
    retries: list[Any] = field(default_factory=list)


_held: ContextVar[_Held | None] = ContextVar("jobtable_celery_held_retry", default=None)


class CeleryTaskFailed(Exception):
    """The tracer recorded a failure that is not an exception we can re-raise."""


class CeleryTaskRetried(Exception):
    """The attempt ended in ``self.retry()``: Celery published the next one.

    Raised to the worker so that it records this attempt ERRORED (unless the
    result backend already recorded it RETRY) and enqueues nothing itself."""


def load_app(spec: str) -> Any:
    """The Celery app named by ``spec`` as ``celery -A spec`` finds it
    (Celery's own ``find_app``): ``module:attribute``, or a module whose
    ``app``/``celery`` attribute is the app, or a package whose ``celery``
    submodule holds it (``--celery-app proj`` for Django's ``proj/celery.py``)."""
    from celery import Celery
    from celery.app.utils import find_app

    if not isinstance(spec, str) or not spec.strip() or "\x00" in spec:
        raise ConfigurationError(f"--celery-app {spec!r}: give the Celery app as module or module:attribute.")
    try:
        app = find_app(spec)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"Cannot import the Celery app module of --celery-app {spec!r} ({exc}).") from None
    except (AttributeError, ImportError, ValueError) as exc:
        raise ConfigurationError(
            f"--celery-app {spec!r} names no Celery app ({exc}); give module:attribute, e.g. proj.celery:app."
        ) from None
    if not isinstance(app, Celery):
        raise ConfigurationError(
            f"--celery-app {spec!r} is {type(app).__name__} {app!r}, not a Celery app; give module:attribute, "
            "e.g. proj.celery:app."
        )
    return app


def _check_json(app: Any) -> None:
    # The worker decodes JSON bodies only; the backend stores JSON only.
    serializer = app.conf.task_serializer
    if serializer != "json":
        raise ConfigurationError(
            f"The Celery app's task_serializer is {serializer!r}; jobtable runs JSON messages only "
            "(pickle is refused). Set task_serializer = 'json'."
        )


def install(
    spec_or_app: Any,
    *,
    pool: str = "processes",
    control: bool = True,
    concurrency: int | None = None,
    beat: bool = False,
) -> Any:
    """Load the Celery app and register the runner (idempotent).

    ``control``: this process is the worker's supervisor: it answers
    Celery's remote control as the worker's one node (``celery_control.py``)
    and sends Celery's worker signals (``celery_lifecycle.py``).  ``beat``:
    its scheduler also runs the app's ``beat_schedule`` (``celery_beat.py``)."""
    global _app
    app = load_app(spec_or_app) if isinstance(spec_or_app, str) else spec_or_app
    _check_json(app)
    if control:
        # As a Celery worker, before anything is traced (the tracer reads
        # the log level once, when it is built): celery_logging.py.
        from . import celery_logging

        celery_logging.setup(app)
    if control:
        # As a Celery worker starts: its loader imports conf.imports /
        # include and the autodiscovered modules (the Django fix-up sets
        # Django up first), then celeryd_init and worker_init are sent.
        app.loader.init_worker()
    else:
        app.loader.import_default_modules()
    app.finalize(auto=True)
    if control:
        _install_beat(app, beat)
    if control:
        from . import celery_lifecycle

        celery_lifecycle.start(app, pool=pool, concurrency=concurrency)
    app.set_current()
    app.set_default()
    _hold_retries(app)
    use_concurrency_key_option()  # chain steps and callbacks sent from here carry it too
    _check_rates(app)
    _app = app
    # Revoked rows of this app's tasks (jobtable_revoke, checked at claim)
    # come here flagged, so they end as under a Celery worker: REVOKED in
    # the backend, a chord part counted, task_revoked sent.
    revokes_sql.runner_revokes["celery"] = lambda row: row.task_name in app.tasks
    if prepare not in dispatch.RUNNERS:
        # First: the Celery app's own tasks win over shim tasks of the same name.
        dispatch.RUNNERS.insert(0, prepare)
        dispatch.REQUEUE_ON_LOST.append(_requeues_on_lost)
        dispatch.RATE_LIMITS.insert(0, _rate_of)
        if control:
            # One node per worker, in the supervisor (members are forked
            # after this and do not listen): celery_control.py.
            from . import celery_control

            celery_control.start(app, pool=pool, revoked_ids=_revoked)
    logger.info("Running the tasks of Celery app %r (%d tasks).", app.main, len(_user_tasks(app)))
    return app


def _install_beat(app: Any, beat: bool) -> None:
    """The app's beat entries into the worker's schedule (after the tasks
    are imported: an entry naming an unknown task stops the worker here)."""
    entries = app.conf.beat_schedule or {}
    if not beat:
        if entries:
            logger.info(
                "Not scheduling the Celery app's %d beat_schedule entr%s (--no-celery-beat): celery beat must "
                "send them.", len(entries), "y" if len(entries) == 1 else "ies",
            )
        return
    from . import celery_beat

    count = celery_beat.install(app)
    if count:
        logger.info(
            "Scheduling the Celery app's %d beat_schedule entr%s (each slot once across all workers): stop "
            "celery beat, or it sends them too (--no-celery-beat keeps celery beat's job).",
            count, "y" if count == 1 else "ies",
        )


def _hold_retries(app: Any) -> None:
    """Keep the retry message of a task with a concurrency key out of the broker.

    ``self.retry()`` publishes the next attempt while this one still holds
    the key, so the table (one pending-or-running row per key) would drop
    it.  While a keyed attempt runs, its own retry (same task id) is held
    here instead, and the worker enqueues the next attempt when it finishes
    this one -- in the transaction that frees the key."""
    amqp = app.amqp
    if getattr(amqp, "_jobtable_holds_retries", False):
        return
    send = amqp.send_task_message

    def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
        held = _held.get()
        if held is not None and (message.headers or {}).get("id") == held.task_id:
            held.retries.append(message)
            return None
        return send(producer, name, message, **options)

    amqp.send_task_message = send_task_message
    amqp._jobtable_holds_retries = True


def use_concurrency_key_option() -> None:
    """Let Celery tasks declare ``@app.task(concurrency_key=...)``.

    The option is a string, or a callable ``(args, kwargs) -> str | None``; a
    message sent without a ``concurrency_key`` header gets it (headers given
    to ``apply_async`` win).  Call this where tasks are sent (e.g. in the
    Celery app module); the native worker calls it for what it sends."""
    from celery.signals import before_task_publish

    before_task_publish.connect(_add_concurrency_key, weak=False, dispatch_uid="jobtable.concurrency_key")


def _add_concurrency_key(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    if headers is None or headers.get(CONCURRENCY_KEY_HEADER):
        return
    from celery import current_app

    task = current_app.tasks.get(sender) if isinstance(sender, str) else None
    # Static lookup: a function set as a task option is a class attribute,
    # and plain getattr would bind it to the task.
    option = inspect.getattr_static(task, "concurrency_key", None) if task is not None else None
    if isinstance(option, staticmethod):
        option = option.__func__
    if not option:
        return
    if callable(option):
        args, kwargs = (list(body[:2]) if isinstance(body, (list, tuple)) and len(body) >= 2 else [(), {}])
        option = option(args, kwargs)
    if option:
        headers[CONCURRENCY_KEY_HEADER] = str(option)


def _requeues_on_lost(row: Any) -> bool:
    """Celery's rule for a task whose pool process died: with ``acks_late``
    and ``reject_on_worker_lost`` (the task's, else the app's settings) its
    message is requeued once, else it fails with WorkerLostError."""
    task = _app.tasks.get(row.task_name) if _app is not None else None
    return task is not None and bool(task.acks_late and task.reject_on_worker_lost)


def _user_tasks(app: Any) -> list[str]:
    return [name for name in app.tasks if not name.startswith("celery.")]


def _limits(task: Any, headers: dict[str, Any]) -> tuple[float | None, float | None]:
    """(hard, soft) seconds: the message's timelimit, else the task's, else the app's."""
    hard, soft = (list(headers.get("timelimit") or []) + [None, None])[:2]
    conf = task.app.conf
    hard = hard or task.time_limit or conf.task_time_limit
    soft = soft or task.soft_time_limit or conf.task_soft_time_limit
    return (float(hard) if hard else None, float(soft) if soft else None)


def prepare(call: TaskCall) -> dispatch.Prepared | None:
    """The dispatch hook: a runnable job for a task of the Celery app, or None."""
    app = _app
    if app is None or call.task_name not in app.tasks:
        return None
    row = dispatch.current_row.get()
    envelope = json.loads(row.message) if row is not None else {"headers": call.headers}
    task = app.tasks[call.task_name]
    hard, soft = _limits(task, call.headers)
    if row is not None and call.task_id in dispatch.expired:
        # jobtable's own REVOKED row, whatever the app's result backend (the
        # jobtable backend's mark_as_revoked then writes the same attempt).
        with db_engine.connect() as conn, conn.begin():
            revokes_sql.record_revoked(conn, [row], db_clock.utcnow(), "expired")
    job = CeleryTaskJob(app, task, call, envelope, soft_limit=soft, keyed=bool(row is not None and row.concurrency_key))
    # No retry_delay: Celery decides retries (self.retry publishes the next attempt).
    return dispatch.Prepared(job=job, timeout=hard)


def _embed(envelope: dict[str, Any], call: TaskCall) -> dict[str, Any]:
    body = envelope.get("body")
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        import base64

        body = base64.b64decode(body or "").decode("utf-8")
    decoded = json.loads(body) if isinstance(body, str) else body
    if isinstance(decoded, list) and len(decoded) > 2 and isinstance(decoded[2], dict):
        return dict(decoded[2])
    return {}


class CeleryTaskJob:
    """One attempt of a Celery task, run by Celery's tracer when the worker calls ``run()``."""

    def __init__(
        self,
        app: Any,
        task: Any,
        call: TaskCall,
        envelope: dict[str, Any],
        *,
        soft_limit: float | None,
        keyed: bool = False,
    ) -> None:
        self.keyed = keyed
        self.app = app
        self.task = task
        self.call = call
        self.envelope = envelope
        self.soft_limit = soft_limit

    def __repr__(self) -> str:
        return f"<Celery task {self.task.name} {self.call.task_id}>"

    def request(self, hostname: str) -> dict[str, Any]:
        """The request dict ``celery.worker.request.Request`` builds from a message."""
        properties = dict(self.envelope.get("properties") or {})
        delivery = properties.get("delivery_info") or {}
        running = current_job()
        request = dict(self.call.headers)
        request.update(
            {
                "properties": properties,
                "reply_to": properties.get("reply_to"),
                "correlation_id": properties.get("correlation_id") or self.call.task_id,
                "hostname": hostname,
                "delivery_info": {
                    "exchange": delivery.get("exchange"),
                    "routing_key": running.queue if running else delivery.get("routing_key"),
                    "priority": properties.get("priority"),
                    # Every attempt is its own row (a rescued one counts as a retry).
                    "redelivered": False,
                },
                "args": self.call.args,
                "kwargs": self.call.kwargs,
                "loglevel": None,
                "logfile": None,
                "is_eager": False,
            }
        )
        request.update(_embed(self.envelope, self.call))
        return request

    def run(self) -> Any:
        from celery.app.trace import trace_task
        from celery.exceptions import TimeLimitExceeded
        from celery.states import FAILURE, IGNORED, REJECTED, RETRY

        running = current_job()
        hostname = running.worker_id if running else "jobtable"
        request = self.request(hostname)
        flagged = self.call.task_id in revokes_sql.flagged
        revokes_sql.flagged.discard(self.call.task_id)
        expired = self.call.task_id in dispatch.expired  # handed over by worker/execute.py
        dispatch.expired.discard(self.call.task_id)
        if flagged or expired or self.call.task_id in _revoked:
            self._revoke(request, expired=expired and not flagged)
        # Each attempt is its own row, received once, as Celery's consumer logs it.
        from .celery_logging import log_received

        log_received(self.task.name, self.call.task_id, self.call.headers)
        held = _Held(self.call.task_id) if self.keyed else None
        token = _held.set(held)
        try:
            with _soft_limit(self.soft_limit):
                retval, info, _, _ = trace_task(
                    self.task,
                    self.call.task_id,
                    self.call.args,
                    self.call.kwargs,
                    request,
                    hostname=hostname,
                    loader=self.app.loader,
                    app=self.app,
                )
        except JobTimeout:
            # As a Celery worker's hard time limit: the backend records
            # FAILURE (and a chord part is counted), then the worker records
            # the attempt timed out.
            self._hard_timeout(request, TimeLimitExceeded)
            raise
        finally:
            _held.reset(token)
        if held is not None and held.retries:
            # The worker writes the next attempt (this row's message, retries
            # + 1) once this one is finished; a DeferJob that does not count
            # as a jobtable retry.
            eta = parse_time((held.retries[-1].headers or {}).get("eta"))
            delay = (eta - db_clock.utcnow()).total_seconds() if eta else 0.0
            raise DeferJob(delay=max(0.0, delay))
        if info is None:
            return retval
        if info.state == RETRY:
            raise CeleryTaskRetried(f"Retry in Celery: {info.retval}")
        if info.state == FAILURE:
            exc = info.retval
            if isinstance(exc, BaseException):
                raise exc
            raise CeleryTaskFailed(str(exc))
        if info.state in (IGNORED, REJECTED):
            # Ignore (e.g. self.replace) / Reject: Celery acks and records nothing more.
            return None
        return retval

    def _revoke(self, request: dict[str, Any], expired: bool = False) -> None:
        """As a Celery worker does with a revoked (or expired) task it
        receives: REVOKED in the backend (a chord part counts), task_revoked,
        never run."""
        from celery import signals
        from celery.app.task import Context
        from celery.exceptions import TaskRevokedError
        from celery.states import REVOKED

        context = Context(request)
        reason = "expired" if expired else "revoked"
        self.task.backend.mark_as_revoked(
            self.call.task_id, reason, request=context, store_result=not self.task.ignore_result, state=REVOKED
        )
        signals.task_revoked.send(sender=self.task, request=context, terminated=False, signum=None, expired=expired)
        raise TaskRevokedError(reason)

    def _hard_timeout(self, request: dict[str, Any], exc_type: Callable[..., BaseException]) -> None:
        from celery.app.task import Context

        hard = _limits(self.task, self.call.headers)[0]
        try:
            self.task.backend.mark_as_failure(
                self.call.task_id,
                exc_type(f"TimeLimitExceeded({hard})"),
                request=Context(request),
                store_result=self.task.store_errors_even_if_ignored or not self.task.ignore_result,
            )
        except Exception:
            logger.exception("Could not record the time limit of %s %s", self.task.name, self.call.task_id)


# -- rate limits -----------------------------------------------------------------------


def _rate_of(name: str) -> float | None:
    """Tokens per second of a task of the app (its ``rate_limit``, else
    ``task_default_rate_limit``, as Celery's worker reads them), shared by
    every worker through the database; None: not the app's, or no limit."""
    app = _app
    if app is None:
        return None
    task = app.tasks.get(name)
    if task is None:
        return None
    limit = getattr(task, "rate_limit", None)
    if limit is None:
        limit = app.conf.task_default_rate_limit
        return parse_rate(limit, "task_default_rate_limit")
    return parse_rate(limit, f"rate_limit of task {name!r}")


def _check_rates(app: Any) -> None:
    """Every task's rate limit read at start: a bad one stops the worker
    naming the task (Celery would fail at the first message)."""
    for name in _user_tasks(app):
        limit = getattr(app.tasks[name], "rate_limit", None)
        if limit is not None:
            parse_rate(limit, f"rate_limit of task {name!r}")
    parse_rate(app.conf.task_default_rate_limit, "task_default_rate_limit")


# -- soft time limits ------------------------------------------------------------------


@contextmanager
def _soft_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in this thread after ``seconds``.

    The main thread (processes pool) gets a signal, which interrupts blocking
    calls such as sleep, like Celery's prefork pool; another thread (threads
    pool) gets an asynchronous exception, noticed at its next bytecode."""
    if not seconds:
        yield
        return
    from celery.exceptions import SoftTimeLimitExceeded

    armed = threading.Event()
    armed.set()
    main = threading.current_thread() is threading.main_thread()
    target = threading.current_thread()
    previous: Any = None
    if main:

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if armed.is_set():
                armed.clear()
                raise SoftTimeLimitExceeded(f"SoftTimeLimitExceeded({seconds:g})")

        previous = signal.signal(signal.SIGUSR1, on_signal)

    def fire() -> None:
        if not armed.is_set():
            return
        if main:
            signal.pthread_kill(target.ident or 0, signal.SIGUSR1)
        else:
            armed.clear()
            raise_in_thread(target, SoftTimeLimitExceeded)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        armed.clear()
        timer.cancel()
        if main:
            signal.signal(signal.SIGUSR1, previous)


# -- revocation --------------------------------------------------------------------------

#: Task ids revoked by broadcast while this process listened (in memory,
#: like a Celery worker without --statedb; the database has them too).
_revoked: set[str] = set()
