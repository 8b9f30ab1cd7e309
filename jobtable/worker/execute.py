"""Running one claimed attempt and turning how it ended into an Outcome."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from .. import badrows, messages, params, safetext, telemetry
from ..db import clock, revokes_sql, tables
from ..db.finish_sql import Outcome
from ..exceptions import UnknownJob
from ..middleware import JobRun, RunJob
from . import cancels, dispatch
from .errors import DeferJob, JobCancelled, JobTimeout
from .slots import Slot

logger = logging.getLogger("jobtable.worker")


def _runner_ends_expired(row: Any) -> bool:
    """Whether the runner of ``row`` (expired) records it itself: then it is
    handed over flagged in ``dispatch.expired`` instead of ended here."""
    if not revokes_sql.runner_records_revoke(row):
        return False
    dispatch.expired.add(row.task_id)
    return True


def _now() -> datetime:
    # The database's clock, never this host's (db/clock.py).
    return clock.utcnow()


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    return max(0.0, float(value or 0))


def _encode_param(value: Any) -> Any:
    return params.encode(value, "the return value", allow_surrogates=True)


def encode_return(value: Any, max_bytes: int = safetext.RETURN_LIMIT) -> str:
    """The stored JSON of a return value; never raises.  One that is too
    deep, cyclic, too large or not encodable is kept readable rather than
    lost (the job did succeed): a JSON string with a note and its repr."""
    return safetext.encode_json(value, _encode_param, max_bytes=max_bytes)


def _error_fields(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    return safetext.exception_fields(exc, with_traceback=with_traceback)


#: Recorded when even the safe formatting above failed (it is not expected
#: to): a fixed text, so that writing it cannot fail too.
OUTCOME_FAILED_TYPE = "jobtable.OutcomeError"
OUTCOME_FAILED_MESSAGE = (
    "jobtable could not record how this job ended: building its result raised {kind}. "
    "The job was not retried, so that it does not run again; see the worker's log."
)


def last_resort(row: Any, exc: BaseException) -> Outcome:
    """An ERRORED outcome built from fixed text only."""
    try:
        kind = safetext.type_name(type(exc))
    except BaseException:
        kind = "an exception"
    return Outcome(
        row,
        tables.ERRORED,
        _now(),
        {"error_type": OUTCOME_FAILED_TYPE, "error_message": OUTCOME_FAILED_MESSAGE.format(kind=kind)},
    )


class Executor:
    """Runs attempts for one pool member."""

    def __init__(
        self,
        *,
        worker_id: str,
        chain: RunJob,
        timer: Any,
        slot: Slot,
        default_timeout: float,
        max_return_bytes: int = safetext.RETURN_LIMIT,
    ) -> None:
        self.worker_id = worker_id
        self.chain = chain
        self.timer = timer
        self.slot = slot
        self.default_timeout = default_timeout
        self.max_return_bytes = max_return_bytes

    def run(self, row: Any) -> Outcome:
        """How the attempt of ``row`` ended; never raises.

        The job may already have run when turning its end into an Outcome
        fails: raising here would crash the pool member and put the row
        back to run again (with its side effects), so that case is recorded
        ERRORED by ``last_resort`` instead.
        """
        try:
            return self._run_traced(row)
        except BaseException as exc:
            try:
                logger.exception("Recording the outcome of %s %s failed.", row.task_name, row.task_id)
            except BaseException:
                pass
            return last_resort(row, exc)

    def _run_traced(self, row: Any) -> Outcome:
        if not telemetry.enabled():
            return self._run(row)
        headers = telemetry.message_headers(row.message)
        with telemetry.process_span(
            queue=row.queue,
            task_name=row.task_name,
            task_id=row.task_id,
            attempt=row.attempt,
            headers=headers,
            run_at=row.run_at,
            started_at=_now(),
        ) as span:
            outcome = self._run(row)
            span.set_outcome(outcome.status)
            if outcome.status in (tables.ERRORED, tables.LOST, tables.DEAD_LETTER, tables.QUARANTINED):
                span.record_failure(
                    outcome.fields.get("error_type") or "Error",
                    outcome.fields.get("error_message") or "",
                    outcome.fields.get("traceback"),
                )
            return outcome

    def _run(self, row: Any) -> Outcome:
        started = _now()
        if row.expires_at is not None and row.expires_at <= started and not _runner_ends_expired(row):
            return Outcome(
                row,
                tables.CANCELLED,
                started,
                {
                    "started_at": None,
                    "error_type": "Expired",
                    "error_message": f"Not run: the job expired at {row.expires_at.isoformat()} "
                    "before a worker started it.",
                },
            )
        call = badrows.decode_call(row.message)
        if isinstance(call, badrows.BadRow):
            # Same verdict as the Kombu transport's (badrows.py): never retried.
            logger.error("%s %s attempt %s DEAD_LETTER: %s", row.task_name, row.task_id, row.attempt, call.reason)
            fields = badrows.dead_letter_fields(call.reason)
            fields["started_at"] = started
            return Outcome(row, tables.DEAD_LETTER, _now(), fields)
        row_token = dispatch.current_row.set(row)
        try:
            prepared = dispatch.prepare(call)
        except Exception as exc:
            # Permanent: retrying an unknown or undecodable job cannot help.
            if isinstance(exc, UnknownJob):
                text = f"Unknown job {row.task_name!r}: {safetext.safe_str(exc)}"
            else:
                text = f"Could not load {row.task_name!r} ({safetext.type_name(type(exc))}: {safetext.safe_str(exc)})"
            logger.error("%s %s attempt %s ERRORED: %s", row.task_name, row.task_id, row.attempt, text)
            fields = _error_fields(exc)
            fields["error_message"] = text
            fields["started_at"] = started
            return Outcome(row, tables.ERRORED, _now(), fields)
        finally:
            dispatch.current_row.reset(row_token)

        timeout = prepared.timeout if prepared.timeout is not None else self.default_timeout
        job_run = JobRun(
            job=prepared.job,
            job_name=row.task_name,
            uuid=row.task_id,
            attempt=row.attempt,
            retries=row.retries,
            queue=row.queue,
            priority=row.priority,
            concurrency_key=row.concurrency_key or "",
            worker_id=self.worker_id,
        )
        self.slot.start(row.id, time.monotonic() + timeout)
        try:
            self.timer.arm(timeout)
            try:
                value = self.chain(job_run)
            finally:
                self.timer.disarm()
        except DeferJob as defer:
            ended = _now()
            if defer.increment_retries and row.attempt > row.retries:
                return self._failed(row, prepared, started, ended, defer, "deferred with no retries left")
            logger.info("%s deferred for %gs", job_run, defer.delay)
            return Outcome(
                row,
                tables.DEFERRED,
                ended,
                {"started_at": started, "error_message": safetext.safe_str(defer)},
                retry_at=ended + timedelta(seconds=defer.delay),
                extra_retries=0 if defer.increment_retries else 1,
            )
        except JobCancelled:
            # Asked from outside (cancels.py): no retry, whatever is left.
            ended = _now()
            how = self.slot.cancel[1]
            logger.warning("%s %s attempt %s %s while running.", row.task_name, row.task_id, row.attempt,
                           "REVOKED (terminated)" if how == cancels.REVOKE else "CANCELLED")
            values = cancels.fields(how)
            values["started_at"] = started
            return Outcome(row, tables.CANCELLED, ended, values)
        except JobTimeout as exc:
            ended = _now()
            exc.args = (f"The job ran longer than its timeout of {timeout:g} seconds and was stopped.",)
            return self._failed(row, prepared, started, ended, exc, "timed out")
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from job code too
            return self._failed(row, prepared, started, _now(), exc, "failed")
        finally:
            self.slot.end()
        return Outcome(
            row,
            tables.SUCCESSFUL,
            _now(),
            {"started_at": started, "return_value": encode_return(value, self.max_return_bytes)},
        )

    def _failed(
        self, row: Any, prepared: dispatch.Prepared, started: datetime, ended: datetime, exc: BaseException, what: str
    ) -> Outcome:
        retry_at = None
        if row.attempt <= row.retries:
            retry_at = ended
            if prepared.retry_delay is not None:
                try:
                    retry_at = ended + timedelta(seconds=_seconds(prepared.retry_delay(row.attempt)))
                except Exception:  # raised, or not a number of seconds (inf, NaN, too large)
                    logger.exception("calculate_retry_delay of %s failed; retrying at once", row.task_name)
        fields = _error_fields(exc)
        fields["started_at"] = started
        logger.warning(
            "%s %s attempt %s %s: %s: %s%s",
            row.task_name,
            row.task_id,
            row.attempt,
            what,
            fields["error_type"],
            safetext.clean(fields["error_message"], 1000),
            f" (retry at {retry_at.isoformat()})" if retry_at else "",
        )
        return Outcome(row, tables.ERRORED, ended, fields, retry_at=retry_at)
