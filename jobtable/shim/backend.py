"""Celery result backend on jobtable's result table.

``result_backend = "jobtable+postgresql+psycopg://..."`` (or
``"jobtable+sqlite:///..."``; registered through the ``celery.result_backends``
entry point).  Results of Celery tasks and of Jobs live in one table,
``jobtable_result``, one row per attempt, so ``AsyncResult(id)`` works for
both:

- ``PENDING``/``RETRY``/``STARTED`` come from the request row while the job is
  waiting or running (RETRY: waiting for an attempt after the first;
  STARTED only as Celery would report it, see ``_reads_started``);
- ``SUCCESS``/``FAILURE``/``REVOKED`` (and ``RETRY`` for a failed attempt that
  was retried) come from the newest result row, and so do custom states
  (``update_state(state="PROGRESS", meta=...)``).

``get(timeout=)`` waits on a LISTEN connection on PostgreSQL (a trigger
notifies when results are written) and on SQLite's data version, instead of
Celery's 0.5 s polling.  Chords are counted in the database as Celery's
Redis backend counts them (``db/chords.py``): each finished part is recorded
once and increments a counter in one ``UPDATE ... RETURNING``, and the part
that completes the count sends the body, or fails it with a ChordError
naming the failed part -- no ``chord_unlock`` task polling.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import ChordError, TimeoutError
from celery.result import GroupResult, allow_join_result, result_from_tuple
from celery.utils.log import get_logger
from kombu.utils.url import maybe_sanitize_url

from .. import limits, messages, params, safetext
from ..db import engine as db_engine
from ..db import chords as db_chords
from ..db import clock, refusals, tables
from ..db import retry as db_retry
from ..db import results as db_results
from ..db.notify import Listener
from ..exceptions import ConfigurationError

# The state mapping is shared with the Celery-free AsyncResult (states.py).
from .states import CELERY_STATE, JOBTABLE_STATUS, STARTED  # noqa: F401  (re-exported)
from .states import meta_of as _shared_meta_of
from .states import task_meta as _shared_task_meta

logger = get_logger(__name__)


def _name(value: Any) -> str | None:
    """A name column (255 characters) from a value task code controls."""
    return None if value is None else safetext.safe_str(value, safetext.NAME_LIMIT)


def _encode_return(value: Any) -> Any:
    return params.encode(value, "the task's return value", allow_surrogates=True)


def _max_return_bytes() -> int:
    from ..settings import get_settings

    return get_settings().max_message_size


def _safe_exception_result(result: dict[str, Any]) -> dict[str, Any]:
    """Celery's exception dict (``exc_type``, ``exc_message``, ``exc_module``)
    with its texts made storable; the message arguments stay a list."""
    safe = dict(result)
    for key in ("exc_type", "exc_module"):
        if result.get(key) is not None:
            safe[key] = safetext.safe_str(result[key], safetext.NAME_LIMIT)
    message = result.get("exc_message")
    if isinstance(message, (list, tuple)):
        safe["exc_message"] = [_safe_argument(item) for item in message]
    elif message is not None:
        safe["exc_message"] = _safe_argument(message)
    return safe


def _safe_argument(value: Any) -> Any:
    if isinstance(value, str):
        return safetext.clean(value)
    return value


#: DeferJob as Celery's exception dict names it (``jobtable.jobs.DeferJob``).
_DEFER_TYPE = ("jobtable.jobs", "DeferJob")


def _is_defer(result: dict[str, Any]) -> bool:
    return (result.get("exc_module"), result.get("exc_type")) == _DEFER_TYPE


def _add_job_columns(values: dict[str, Any], request: Any) -> None:
    """The retry budget and concurrency key a Job's message carries
    (``messages.RETRIES_HEADER``, ``CONCURRENCY_KEY_HEADER``: custom headers,
    which Celery keeps in ``request.headers``), so that a Job's result rows
    written by a Celery worker have the columns the native worker writes."""
    headers = getattr(request, "headers", None)
    if not isinstance(headers, dict):
        return
    budget = headers.get(messages.RETRIES_HEADER)
    if isinstance(budget, int) and not isinstance(budget, bool) and 0 <= budget <= limits.INT32_MAX:
        values["retries"] = budget
    key = headers.get(messages.CONCURRENCY_KEY_HEADER)
    if isinstance(key, str) and key:
        values["concurrency_key"] = _name(key)


class JobtableBackend(BaseBackend):  # type: ignore[misc]  # Celery ships no type hints: BaseBackend is Any
    """Celery result backend storing into ``jobtable_result``."""

    persistent = True
    supports_autoexpire = False
    supports_native_join = False

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        conf = self.app.conf
        configured = url or conf.result_backend or ""
        if isinstance(configured, str) and configured.startswith("jobtable+"):
            configured = configured[len("jobtable+") :]
        if not configured or configured == "jobtable":
            from ..settings import get_settings

            configured = get_settings().database_url
        self.url = db_engine.normalize_url(configured).render_as_string(hide_password=False)
        if self.serializer != "json":
            raise ConfigurationError(
                f"jobtable's result backend stores JSON, but result_serializer is {self.serializer!r}. "
                "Set result_serializer = 'json' (and accept_content to include 'json')."
            )
        self.expires = self.prepare_expires(kwargs.get("expires"), type=int)
        self._local = threading.local()

    # -- plumbing ---------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        return db_engine.get_engine(self.url)

    def _connect(self) -> Any:
        return db_engine.connect(self.engine)

    def as_uri(self, include_password: bool = False) -> str:
        uri = "jobtable+" + self.url
        return uri if include_password else maybe_sanitize_url(uri)

    def _listener(self) -> Listener:
        # One per thread: a LISTEN connection is not thread-safe.
        listener = getattr(self._local, "listener", None)
        if listener is None:
            listener = Listener.create(self.engine, [], channel=tables.RESULT_CHANNEL)
            self._local.listener = listener
        return listener

    # -- writing ----------------------------------------------------------------------------

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None, **kwargs: Any
    ) -> Any:
        status = JOBTABLE_STATUS.get(state)
        custom = status is None and state not in (states.PENDING, states.RECEIVED)
        if status is None and not custom:
            return result  # PENDING: the request row's state tells
        if custom:
            # update_state(state="PROGRESS", meta=...): an unfinished row
            # (status STARTED, like task_track_started's) whose meta keeps
            # the state's name -- any name, of any length -- and its meta.
            status = STARTED
        # Task code controls the texts: made storable (no NUL, no lone
        # surrogates, capped) before they reach the row or Celery's meta.
        if isinstance(traceback, str):
            traceback = safetext.clean(traceback, safetext.TRACEBACK_LIMIT, keep_end=True)
        elif traceback is not None:
            traceback = safetext.safe_str(traceback, safetext.TRACEBACK_LIMIT)
        if isinstance(result, dict) and "exc_type" in result:
            result = _safe_exception_result(result)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id
        now = clock.utcnow()
        delivery_info = getattr(request, "delivery_info", None) or {}
        values: dict[str, Any] = {
            "task_id": task_id,
            "task_name": _name(getattr(request, "task", None) or meta.get("name") or ""),
            "queue": _name(delivery_info.get("routing_key") or getattr(request, "queue", None) or "celery"),
            "attempt": int(getattr(request, "retries", 0) or 0) + 1,
            "status": status,
            "started_at": now if state == states.STARTED else None,
            "ended_at": now,
            "worker_id": _name(getattr(request, "hostname", None)),
            "retried": state == states.RETRY,
            "meta": self.encode(meta),
        }
        _add_job_columns(values, request)
        if state == states.SUCCESS:
            values["return_value"] = safetext.encode_json(
                result, _encode_return, max_bytes=_max_return_bytes()
            )
        elif isinstance(result, dict) and "exc_type" in result:
            message = result.get("exc_message")
            values["error_type"] = _name(".".join(filter(None, [result.get("exc_module"), result.get("exc_type")])))
            values["error_message"] = safetext.clean(
                " ".join(map(safetext.safe_str, message)) if isinstance(message, (list, tuple)) else safetext.safe_str(message)
            )
            values["traceback"] = traceback
            if state == states.RETRY and _is_defer(result):
                # A Job's DeferJob run by a Celery worker (celery_jobs.py
                # retries it through Celery): recorded as the native worker
                # records it, DEFERRED with the deferral's text only.
                values.update(status=tables.DEFERRED, error_type=None, traceback=None)
        self._write(values, only_new=state == states.STARTED, only_unfinished=custom)
        return result

    def _write(self, values: dict[str, Any], *, only_new: bool, only_unfinished: bool = False) -> None:
        """Upsert the row; a row the database refuses (bad data, not a lost
        connection, which raises as before) is replaced by a note naming why,
        and a refused note is logged: a refusal never reaches Celery, whose
        worker would otherwise lose the task (``-P solo`` exits)."""
        try:
            # An upsert on (task_id, attempt): a retry after a dropped
            # connection (db/retry.py) cannot write the result twice.
            db_retry.write_retrying(
                self.engine,
                lambda conn, _retrying: db_results.upsert_result(
                    conn, values, only_new=only_new, only_unfinished=only_unfinished
                ),
            )
            return
        except Exception as exc:
            if not refusals.is_refusal(exc):
                raise
            why = refusals.describe(exc)
        logger.error(
            "The database refused the result of task %s (%s); storing a note instead.",
            safetext.clean(str(values.get("task_id")), 255),
            why,
        )
        if only_new or only_unfinished:
            return  # a STARTED mark or a custom state: the final state writes the row
        try:
            with self._connect() as conn, conn.begin():
                db_results.upsert_result(conn, refusals.backend_note(values, why))
        except Exception as exc:
            if not refusals.is_refusal(exc):
                raise
            logger.error(
                "The database refused even the note for task %s (%s); its result is not stored.",
                safetext.clean(str(values.get("task_id")), 255),
                refusals.describe(exc),
            )

    def _forget(self, task_id: str) -> None:
        with self._connect() as conn, conn.begin():
            db_results.forget(conn, task_id)

    # -- reading -----------------------------------------------------------------------------

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        with self._connect() as conn, conn.begin():
            found = db_results.job_state(conn, task_id)
        return _shared_task_meta(task_id, found, self.decode, self.meta_from_decoded, self._reads_started)

    def _reads_started(self, active: Any) -> bool:
        """Whether a running request row reads STARTED, as Celery would say.

        A Celery worker's claim (``kombu:`` consumer ids) never does: the row
        is claimed while the message is only prefetched, and the worker
        stores STARTED itself for a task that tracks it.  A native worker's
        follows the task's ``track_started`` (``task_track_started`` for a
        name this app does not know, such as a Job)."""
        if str(active.worker_id or "").startswith("kombu:"):
            return False
        task = self.app.tasks.get(active.task_name)
        return bool(task.track_started if task is not None else self.app.conf.task_track_started)

    def _meta_of(self, row: Any) -> dict[str, Any]:
        return _shared_meta_of(row, self.decode, self.meta_from_decoded)

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        """Wait for a ready state, woken by result writes instead of polling."""
        self._ensure_not_eager()
        listener = self._listener()  # listening before the first read: no lost wake-up
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta: dict[str, Any] = self.get_task_meta(task_id, cache=False)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval:
                on_interval()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("The operation timed out.")
            # The cap only bounds a wait whose notification was lost.
            listener.wait(min(remaining, 5.0) if remaining is not None else 5.0)

    # -- groups ---------------------------------------------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        with self._connect() as conn, conn.begin():
            db_results.save_group(conn, group_id, self.encode({"result": result.as_tuple()}), clock.utcnow())
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        with self._connect() as conn, conn.begin():
            encoded = db_results.load_group(conn, group_id)
        if encoded is None:
            return None
        meta: dict[str, Any] = self.decode(encoded)
        meta["result"] = result_from_tuple(meta["result"], self.app)
        return meta

    def _delete_group(self, group_id: str) -> None:
        with self._connect() as conn, conn.begin():
            db_results.delete_group(conn, group_id)

    # -- chords ---------------------------------------------------------------------------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        self.ensure_chords_allowed()
        # The header's results are saved whole: as_tuple() freezes a header
        # built from a generator (a _regen) at once, before its tasks are sent.
        header = self.app.GroupResult(*header_result_args)
        with self._connect() as conn, conn.begin():
            # A frozen chord applied again is a new run: its old parts go.
            db_chords.delete_parts(conn, header.id)
            db_results.start_chord(conn, header.id, self.encode({"result": header.as_tuple()}), clock.utcnow())

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        with self._connect() as conn, conn.begin():
            db_results.set_chord_size(conn, group_id, chord_size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """``Task.add_to_chord``: the chord counts one more part (as Redis's)."""
        with self._connect() as conn, conn.begin():
            db_chords.add_part(conn, group_id)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        """Record a finished header part; the part completing the count calls
        the body -- or fails it, as Celery's Redis backend does: a failed part
        gives ``ChordError("Dependency <id> raised ...")`` (its cause the
        part's exception), stored as the body's result, passed to the body's
        ``link_error`` callbacks and to what is chained after it, and to each
        task of a group body (base.chord_error_from_stack)."""
        tid, gid = request.id, request.group
        if not gid or not tid or not request.chord:
            return
        encoded = self.encode([tid, state, self.encode_result(result, state)])
        with self._connect() as conn, conn.begin():
            counted = db_chords.record_part(conn, gid, request.group_index, tid, encoded, clock.utcnow())
        if counted is None:
            return
        done, size = counted
        if size is None or done != size:
            return
        from celery.canvas import maybe_signature

        callback = maybe_signature(request.chord, app=self.app)
        try:
            values = self._chord_values(gid)
            try:
                self.app.amqp._retry_publish(callback.delay, values)
            except Exception as exc:
                logger.exception("Chord callback for %r raised: %r", gid, exc)
                self.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
        except ChordError as exc:
            logger.exception("Chord %r raised: %r", gid, exc)
            self.chord_error_from_stack(callback, exc)
        except Exception as exc:
            logger.exception("Chord %r raised: %r", gid, exc)
            self.chord_error_from_stack(callback, ChordError(f"Join error: {exc!r}"))
        finally:
            with self._connect() as conn, conn.begin():
                db_chords.delete_parts(conn, gid)
                db_results.delete_group(conn, gid)

    def _chord_values(self, group_id: str) -> list[Any]:
        """The header's results for the body, in header order; a failed part
        raises ChordError naming it."""
        header = GroupResult.restore(group_id, backend=self)
        if header is not None and any(isinstance(part, GroupResult) for part in header.results):
            # A header with groups in it: joined for the nested structure
            # (as Redis does); every part has returned, so nothing waits.
            header.on_ready()
            with allow_join_result():
                joined: list[Any] = header.join(timeout=self.app.conf.result_chord_join_timeout, propagate=True)
            return joined
        with self._connect() as conn, conn.begin():
            recorded = db_chords.parts(conn, group_id)
        return [self._unpack_part(encoded) for encoded in recorded]

    def _unpack_part(self, encoded: str) -> Any:
        tid, state, value = self.decode(encoded)
        if state in states.EXCEPTION_STATES:
            value = self.exception_to_python(value)
        if state in states.PROPAGATE_STATES:
            error = ChordError(f"Dependency {tid} raised {value!r}")
            if isinstance(value, Exception):
                error.__cause__ = value  # a group body's tasks fail with the part's own exception
            raise error
        return value

    # -- expiry ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete results and groups older than ``result_expires`` (celery beat's
        ``celery.backend_cleanup`` calls this daily), in small batches."""
        if not self.expires:
            return
        before = clock.utcnow() - timedelta(seconds=self.expires)
        while True:
            with self._connect() as conn, conn.begin():
                if not db_results.delete_results_before(conn, before):
                    break
        with self._connect() as conn, conn.begin():
            db_results.delete_groups_before(conn, before)
