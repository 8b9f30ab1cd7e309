"""The names of a request's states and of a result's statuses.

Below everything that speaks of them: ``db/tables.py`` stores them (and
re-exports them, as ``tables.PENDING`` and so on), ``messages.py`` builds
rows in them, and neither needs the other for it.
"""

from __future__ import annotations

#: Request states.  ``scheduled`` rows are not yet due and live outside the
#: claim index, so a million future jobs cost the claim nothing; a cheap
#: promotion step turns them into ``pending`` when they are due.
SCHEDULED = "scheduled"
PENDING = "pending"
RUNNING = "running"

# Result statuses.
SUCCESSFUL = "SUCCESSFUL"
ERRORED = "ERRORED"
CANCELLED = "CANCELLED"
LOST = "LOST"
DEFERRED = "DEFERRED"
#: Terminal statuses of poison: a job that killed its worker process
#: ``worker_quarantine_after`` times, and a row whose message cannot be decoded
#: (a dead letter).  Both keep the message, are never claimed again, and can be
#: re-queued by hand (``jobtable retry``, the dashboard).
QUARANTINED = "QUARANTINED"
DEAD_LETTER = "DEAD_LETTER"
RESULT_STATUSES = (SUCCESSFUL, ERRORED, CANCELLED, LOST, DEFERRED, QUARANTINED, DEAD_LETTER)

#: A finished job's status by its code in a worker's ledger files
#: (worker/ledger.py, worker/routed_ledger.py; 0: unknown).  The order is
#: the files' format, shared by both: append only.
LEDGER_STATUSES = ("", "SUCCESSFUL", "ERRORED", "CANCELLED", "DEAD_LETTER", "DEFERRED", "LOST", "QUARANTINED")
