"""A little shared memory per pool member, written per job without I/O.

Each member owns one slot: the row id of the job it runs (0 when idle), that
job's deadline (monotonic seconds, the host's one clock for every process:
a wall-clock step must not kill a job or let a stuck one run on; 0 when none), a count of jobs finished, and
its claim batch size, and the row the supervisor asked it to cancel (with
how: worker/cancels.py); and from the supervisor, when its last heartbeat
reached the database (monotonic seconds) and whether it found that the
member's claims were taken by a rescuer (``disowned``): a member cut off
from the database stops starting the jobs it holds (process.py).  The supervisor reads them to record the right job
LOST when a member dies, to kill a member stuck past its deadline, for
jobs/s in the stats, and to start a dead member's replacement at the batch
size it had reached (rather than ramping up again from a few jobs).  An
anonymous shared mmap made before fork() is visible to parent and children.
"""

from __future__ import annotations

import mmap

FIELDS = 8  # row_id, deadline, done, batch, cancel row, cancel how, contact, disowned
ROW, DEADLINE, DONE, BATCH, CANCEL, CANCEL_HOW, CONTACT, DISOWNED = 0, 1, 2, 3, 4, 5, 6, 7


class Slots:
    def __init__(self, count: int) -> None:
        self.count = count
        self._mm = mmap.mmap(-1, max(1, count) * FIELDS * 8)
        self._view = memoryview(self._mm).cast("d")

    def slot(self, index: int) -> Slot:
        return Slot(self._view, index * FIELDS)

    def done_total(self) -> int:
        return int(sum(self._view[i * FIELDS + DONE] for i in range(self.count)))


class Slot:
    __slots__ = ("_view", "_base")

    def __init__(self, view: memoryview[float], base: int) -> None:
        self._view = view
        self._base = base

    def start(self, row_id: int, deadline: float) -> None:
        self._view[self._base + DEADLINE] = deadline
        self._view[self._base + ROW] = row_id

    def end(self) -> None:
        self._view[self._base + ROW] = 0
        self._view[self._base + DEADLINE] = 0
        self._view[self._base + DONE] += 1

    def clear(self) -> None:
        self._view[self._base + ROW] = 0
        self._view[self._base + DEADLINE] = 0
        self._view[self._base + CANCEL] = 0
        self._view[self._base + DISOWNED] = 0

    def ask_cancel(self, row_id: int, how: int) -> None:
        """The supervisor asks the member to cancel ``row_id`` (if it still
        runs it when the signal lands): ``how`` is a ``cancels`` code."""
        self._view[self._base + CANCEL_HOW] = how
        self._view[self._base + CANCEL] = row_id

    @property
    def cancel(self) -> tuple[int, int]:
        """The row the member was asked to cancel (0: none) and how."""
        return int(self._view[self._base + CANCEL]), int(self._view[self._base + CANCEL_HOW])

    @property
    def batch(self) -> int:
        """The member's claim batch size (0: not known yet)."""
        return int(self._view[self._base + BATCH])

    @batch.setter
    def batch(self, size: int) -> None:
        self._view[self._base + BATCH] = size

    @property
    def contact(self) -> float:
        """Monotonic time of the supervisor's last heartbeat that reached
        the database for this member (0: none yet)."""
        return float(self._view[self._base + CONTACT])

    @contact.setter
    def contact(self, mono: float) -> None:
        self._view[self._base + CONTACT] = mono

    @property
    def disowned(self) -> bool:
        """The supervisor found this member's worker row gone: a rescuer
        took the rows it held (they are no longer its to run)."""
        return bool(self._view[self._base + DISOWNED])

    @disowned.setter
    def disowned(self, value: bool) -> None:
        self._view[self._base + DISOWNED] = 1.0 if value else 0.0

    @property
    def row_id(self) -> int:
        return int(self._view[self._base + ROW])

    @property
    def deadline(self) -> float:
        return float(self._view[self._base + DEADLINE])

    @property
    def done(self) -> int:
        return int(self._view[self._base + DONE])
