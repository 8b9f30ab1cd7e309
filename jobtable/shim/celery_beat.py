"""A Celery app's ``beat_schedule`` run by the native worker.

``jobtable worker --celery-app proj`` schedules the app's
``app.conf.beat_schedule`` (``CELERY_BEAT_SCHEDULE`` in Django settings)
as the shim schedules its beat entries (``schedules.py``): each entry
becomes a ``(job, Schedule)`` pair of JOBTABLE_SCHEDULE, so the worker's
scheduler enqueues each slot once across all workers -- the ledger row is
claimed in the transaction that inserts the message.  The message is the
one celery beat sends: the entry's task is called by Celery's own
``Task.apply_async(args, kwargs, **options)`` (routing, default
``expires``/priority, ``before_task_publish``/``after_task_publish``, the
``celery_beat_task`` header), with a producer that writes the message into
that transaction instead of the broker's connection.

Schedules: intervals (seconds, ``timedelta``, ``celery.schedules.schedule``)
of 1 s or more, aligned on the clock as in the shim; ``celery.schedules.crontab``
as cron fields; ``solar`` and other schedule classes are refused at start,
as is an entry naming a task the app does not define.

Celery is imported only here, and this module only with --celery-app.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from ..cron import CronError
from ..db import clock as db_clock
from ..db import enqueue_sql
from ..exceptions import ConfigurationError
from ..jobbase import JobRequest
from ..jobs import Job
from ..message_checks import checked_row
from ..messages import CONCURRENCY_KEY_HEADER
from ..scheduling import Schedule
from ..setting_rules import safe_repr, safe_str

#: Keys of a Celery beat entry this module reads.
_ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}


class CeleryBeatJob(Job):
    """One beat entry of a Celery app: enqueued by Celery's ``apply_async``
    into the scheduler's transaction.  Not registered as a Job: the worker
    runs the message as the Celery task it names (``celery_runner.py``)."""

    def __init__(self, app: Any, key: str, task: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any]) -> None:
        self.app, self.key, self.task = app, key, task
        self.args, self.kwargs, self.options = args, kwargs, options

    @classmethod
    def of_entry(cls, app: Any, key: str, task: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 options: dict[str, Any]) -> CeleryBeatJob:
        job = cls(app, key, task, args, kwargs, options)
        # The ledger entry's name is made from job_name() and the recorded
        # constructor arguments (JobType sets them after __init__): the
        # entry key and the task name only (Celery beat knows an entry by
        # its key), so every worker derives the same name.
        job._init_args, job._init_kwargs = (), {}
        return job

    def job_name(self) -> str:  # type: ignore[override]  # per entry, not per class
        return f"celery-beat:{self.key} ({self.task})"

    def default_queue(self) -> str:
        """The queue Celery's router sends the entry to (what the worker's
        queue check compares with the queues it consumes)."""
        route = self.app.amqp.router.route(dict(self.options), self.task, self.args, self.kwargs)
        queue = route.get("queue")
        return str(getattr(queue, "name", None) or queue or route.get("routing_key") or self.app.conf.task_default_queue)

    def default_concurrency_key(self) -> str:
        return ""  # the scheduler's per-entry key

    def run(self) -> Any:  # never runs as a Job: the row names the Celery task
        raise RuntimeError("A Celery beat entry is run as its Celery task.")

    def run_in_worker(self, **options: Any) -> JobRequest | None:
        """Send the entry's task as celery beat does, in ``connection``'s transaction."""
        connection = options.pop("connection", None)
        concurrency_key = options.pop("concurrency_key", None)
        if connection is None or any(value not in (None, 0) for value in options.values()):
            raise ConfigurationError(
                f"The Celery beat entry {self.key!r} is sent by the worker's scheduler only, not run_in_worker()."
            )
        from celery.beat import _evaluate_entry_args, _evaluate_entry_kwargs

        producer = _TransactionProducer(connection, source=f"Celery beat entry {self.key!r}")
        sent = dict(self.options)
        headers = dict(sent.pop("headers", None) or {})
        headers["celery_beat_task"] = True  # as celery beat marks its messages
        if concurrency_key:
            headers[CONCURRENCY_KEY_HEADER] = concurrency_key
        task = self.app.tasks[self.task]
        task.apply_async(
            _evaluate_entry_args(self.args), _evaluate_entry_kwargs(self.kwargs),
            producer=producer, headers=headers, **sent,
        )
        return producer.request


class _Connection:
    """What Celery's send_task asks of ``producer.connection``."""

    @contextlib.contextmanager
    def _reraise_as_library_errors(self) -> Iterator[None]:
        yield


class _TransactionProducer:
    """A Kombu producer as far as Celery's ``send_task_message`` uses one:
    ``publish`` stores the message as the jobtable transport stores a
    Kombu publish (``transport/channel.py``), in the given connection."""

    def __init__(self, conn: Any, *, source: str) -> None:
        self.conn = conn
        self.source = source
        self.connection = _Connection()
        self.request: JobRequest | None = None

    def publish(self, body: Any, *, exchange: Any = "", routing_key: str | None = None,
                serializer: str | None = None, compression: str | None = None, delivery_mode: Any = None,
                declare: Any = None, headers: dict[str, Any] | None = None, **properties: Any) -> None:
        from kombu import serialization

        if compression:
            raise ConfigurationError(f"{self.source}: task_compression is not supported by jobtable; unset it.")
        for unused in ("retry", "retry_policy", "timeout", "confirm_timeout", "mandatory", "immediate"):
            properties.pop(unused, None)
        content_type, content_encoding, data = serialization.dumps(  # type: ignore[no-untyped-call]
            body, serializer=serializer or "json"
        )
        priority = properties.pop("priority", None)
        expiration = properties.pop("expiration", None)
        if expiration is not None:
            properties["expiration"] = str(int(float(expiration) * 1000))  # as Kombu's Producer does
        queues = [q for q in (declare or []) if getattr(q, "name", None)]
        queue = queues[0].name if queues else (routing_key or "")
        exchange_name = getattr(exchange, "name", exchange) or ""
        envelope = {
            "body": data.decode("utf-8") if isinstance(data, bytes) else data,
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": dict(headers or {}),
            "properties": {
                **properties,
                "delivery_mode": 2 if delivery_mode in (None, 2, "persistent") else 1,
                "priority": priority or 0,
                "body_encoding": None,
                "delivery_info": {"exchange": exchange_name, "routing_key": routing_key or queue},
            },
        }
        now = db_clock.utcnow()
        row = checked_row(envelope, queue, now, source=self.source, clamp_priority=True, escape_surrogates=True)
        inserted = enqueue_sql.insert_requests(self.conn, [row])
        if row["task_id"] in inserted:  # else the entry's previous run still waits or runs
            self.request = JobRequest.from_row(SimpleNamespace(id=inserted[row["task_id"]], **row))


def _schedule(key: str, value: Any, timezone: Any) -> Schedule:
    """A Celery beat entry's ``schedule`` as a jobtable Schedule."""
    from celery import schedules as celery_schedules

    from .schedules import crontab as shim_crontab
    from .schedules import interval_schedule, to_schedule

    if isinstance(value, celery_schedules.solar):
        raise ConfigurationError(
            f"beat_schedule[{key!r}]: solar schedules are not supported by jobtable. Use a crontab(...) at the "
            "times you need, or remove the entry."
        )
    if isinstance(value, celery_schedules.crontab):
        if getattr(value, "tz", None) is not None:
            timezone = value.tz
        converted = shim_crontab(
            minute=value._orig_minute, hour=value._orig_hour, day_of_week=value._orig_day_of_week,
            day_of_month=value._orig_day_of_month, month_of_year=value._orig_month_of_year,
        )
        return converted.schedule(timezone)
    if type(value) is celery_schedules.schedule:  # an interval (subclasses are other schedules)
        if value.relative:
            raise ConfigurationError(
                f"beat_schedule[{key!r}]: schedule(relative=True) is not supported: intervals are aligned on "
                "the clock in jobtable. Remove relative=True."
            )
        return interval_schedule(value.run_every, timezone)
    if isinstance(value, celery_schedules.BaseSchedule):
        raise ConfigurationError(
            f"beat_schedule[{key!r}]: the schedule {safe_repr(value)} ({type(value).__name__}) is not supported "
            "by jobtable. Use a number of seconds, a timedelta, schedule(run_every=...) or crontab(...)."
        )
    if isinstance(value, (int, float, timedelta, str)) and not isinstance(value, bool):
        return to_schedule(value, timezone)
    raise ConfigurationError(
        f"beat_schedule[{key!r}]: the schedule {safe_repr(value)} is not supported. Use a number of seconds, "
        "a timedelta, schedule(run_every=...) or crontab(...)."
    )


def beat_jobs(app: Any) -> list[tuple[CeleryBeatJob, Schedule]]:
    """``(job, Schedule)`` pairs of ``app.conf.beat_schedule``, or a
    ConfigurationError naming the entry and the fix."""
    beat_schedule = app.conf.beat_schedule or {}
    if not isinstance(beat_schedule, dict):
        raise ConfigurationError(
            f"The Celery app's beat_schedule is {type(beat_schedule).__name__}, not a dict of entries."
        )
    timezone = app.conf.timezone or "UTC"
    pairs: list[tuple[CeleryBeatJob, Schedule]] = []
    for key, entry in beat_schedule.items():
        key = str(key)
        if not isinstance(entry, dict) or "task" not in entry or "schedule" not in entry:
            raise ConfigurationError(
                f"beat_schedule[{key!r}] is {safe_repr(entry)}: each entry is a dict with 'task' and 'schedule' "
                "(and 'args', 'kwargs', 'options')."
            )
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigurationError(
                f"beat_schedule[{key!r}] has unknown keys {sorted(map(str, unknown))}: "
                "use task, schedule, args, kwargs, options."
            )
        if entry.get("relative"):
            raise ConfigurationError(
                f"beat_schedule[{key!r}]: relative=True is not supported (intervals are aligned on the clock)."
            )
        name = entry["task"]
        if not isinstance(name, str) or name not in app.tasks:
            raise ConfigurationError(
                f"beat_schedule[{key!r}] names the task {safe_repr(name)}, which the Celery app does not define. "
                "Fix the entry's 'task' (Celery's name is module.function, or the task's name=), import its "
                "module (include= / autodiscover_tasks), or remove the entry."
            )
        args, kwargs, options = entry.get("args") or (), entry.get("kwargs") or {}, entry.get("options") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(options, dict):
            raise ConfigurationError(
                f"beat_schedule[{key!r}]: args must be a list or tuple, kwargs and options dicts."
            )
        try:
            json.dumps([list(args), kwargs])
        except (TypeError, ValueError) as exc:
            if not any(_is_lazy(value) for value in [*args, *kwargs.values()]):
                raise ConfigurationError(
                    f"beat_schedule[{key!r}]: the arguments are not JSON ({safe_str(exc)}); jobtable sends JSON only."
                ) from None
        try:
            when = _schedule(key, entry["schedule"], timezone)
        except CronError as exc:
            raise ConfigurationError(f"beat_schedule[{key!r}]: {safe_str(exc)}") from None
        except ConfigurationError:
            raise
        except Exception as exc:  # the shim's NotSupported (a too-short interval, both day fields)
            raise ConfigurationError(f"beat_schedule[{key!r}]: {safe_str(exc)}") from None
        pairs.append((CeleryBeatJob.of_entry(app, key, name, tuple(args), dict(kwargs), dict(options)), when))
    return pairs


def _is_lazy(value: Any) -> bool:
    from celery.beat import BeatLazyFunc

    return isinstance(value, BeatLazyFunc)


def install(app: Any) -> int:
    """Make the app's beat entries part of JOBTABLE_SCHEDULE (other entries
    are kept); returns how many.  Refuses, naming the entry, what cannot run."""
    from .. import settings

    pairs = beat_jobs(app)
    current = settings.get_settings()
    kept = [item for item in current.schedule if not _is_beat_pair(item)]
    settings.configure(schedule=[*kept, *pairs])
    if pairs and not any(_is_beat_pair(item) for item in settings.get_settings().schedule):
        raise ConfigurationError(
            "The JOBTABLE_SCHEDULE environment variable overrides the Celery app's beat_schedule. Unset it, "
            "or pass --no-celery-beat and keep running celery beat."
        )
    return len(pairs)


def _is_beat_pair(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], CeleryBeatJob)
