"""The started-task ledger of Celery consumers (transport/started.py), on
real files in the private runtime directory."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobtable.transport import started

#: Delivery tags as the transport makes them (``<row id>:<delivery>``).
TAGS = st.builds(lambda r, d: f"{r}:{d}", st.integers(1, 2**63 - 1), st.integers(1, 10**9))


@pytest.fixture
def consumer() -> Iterator[str]:
    cid = f"kombu:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    started.create(cid)
    yield cid
    started.remove(cid)


def test_a_ledger_lists_only_the_tasks_started(consumer: str) -> None:
    # No task started yet: no evidence, every held message counts a crash.
    assert started.read(consumer) is None
    started.task_started("t1")
    started.task_finished("t1")
    started.task_started("t2")
    assert started.read(consumer) == {"t1", "t2"}
    started.task_finished("t2")


def test_another_consumer_of_the_same_pid_or_host_reads_nothing(consumer: str) -> None:
    started.task_started("t1")
    started.task_finished("t1")
    pid = os.getpid()
    assert started.read(f"kombu:{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:12]}") is None
    assert started.read(f"kombu:not-{socket.gethostname()}:{pid}:{consumer.rsplit(':', 1)[1]}") is None
    assert started.read("garbage") is None
    started.remove(consumer)
    assert started.read(consumer) is None


def test_two_consumers_of_one_process_both_record(consumer: str) -> None:
    second = f"kombu:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    started.create(second)
    try:
        started.task_started("both")
        started.task_finished("both")
        assert started.read(consumer) == {"both"} and started.read(second) == {"both"}
    finally:
        started.remove(second)


def test_a_long_lived_ledger_keeps_only_the_running_tasks(consumer: str) -> None:
    started.task_started("still-running")
    for i in range(started.ROTATE_AT // 30):
        started.task_started(f"done-{i:026d}")
        started.task_finished(f"done-{i:026d}")
    ids = started.read(consumer)
    assert ids is not None and "still-running" in ids
    assert len(ids) < started.ROTATE_AT // 30  # rotated: finished ids dropped
    started.task_finished("still-running")


def test_a_consumer_is_dead_once_its_pid_is_gone(consumer: str) -> None:
    assert not started.consumer_dead(consumer)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert started.consumer_dead(f"kombu:{socket.gethostname()}:{child}:abc")


# -- what the consumer reads back: the delivery tags started (Tail) -------------------------


def test_a_tail_reads_each_started_delivery_once(consumer: str) -> None:
    tail = started.Tail(consumer)
    assert tail.new_tags() == set()
    started.task_started("t1", "5:1")
    started.task_started("t2", "6:2")
    assert tail.new_tags() == {"5:1", "6:2"}
    assert tail.new_tags() == set()
    started.task_started("t3")  # no tag known: nothing to report
    started.task_started("t4", "7:1")
    assert tail.new_tags() == {"7:1"}
    # The quarantine's read still lists task ids only.
    assert started.read(consumer) == {"t1", "t2", "t3", "t4"}
    for t in ("t1", "t2", "t3", "t4"):
        started.task_finished(t)
    # Another consumer of this process reads its own ledger.
    assert started.Tail("garbage").new_tags() == set()


HOSTILE_IDS = ["with\nnewline", "#8:1", "\n#9:1", "nul\x00id", "lone\ud800surrogate", "x" * 10_000, "\x1e5:5",
               "line\u2028sep", ""]
HOSTILE_TAGS: list[object] = ["x:1", "1:2\n#3:4", "1" * 30 + ":1", "\u0661:\u0661", "-1:1", "1:1 ", 5, None, b"2:2"]


def test_hostile_task_ids_and_tags_forge_no_delivery(consumer: str) -> None:
    tail = started.Tail(consumer)
    for task_id in HOSTILE_IDS:
        started.task_started(task_id, "10:1")
    for tag in HOSTILE_TAGS:
        started.task_started("t", tag)  # type: ignore[arg-type]
    assert tail.new_tags() == {"10:1"}
    ids = started.read(consumer)
    assert ids is not None and "#8:1" in ids and "x" * 10_000 in ids and "with newline" in ids
    assert "line\u2028sep" in ids and "\x1e5:5" in ids  # split at "\n" only
    for task_id in [*HOSTILE_IDS, "t"]:
        started.task_finished(task_id)


class _Raising:
    def __getattr__(self, name: str) -> object:
        raise RuntimeError("no request here")

    def __str__(self) -> str:
        raise RuntimeError("no str either")


class _Props(dict):  # type: ignore[type-arg]
    def get(self, *args: object) -> object:
        raise RuntimeError("hostile mapping")


def test_the_prerun_handler_survives_odd_task_objects(consumer: str) -> None:
    tail = started.Tail(consumer)
    request = type("R", (), {"properties": {"delivery_tag": "11:3"}})()
    started._on_prerun(task_id="good", task=type("T", (), {"request": request})())
    started._on_prerun(task_id="raising", task=_Raising())
    started._on_prerun(task_id="props", task=type("T", (), {"request": type("R", (), {"properties": _Props()})()})())
    started._on_prerun(task_id="listprops", task=type("T", (), {"request": type("R", (), {"properties": [1]})()})())
    started._on_prerun(task_id=None, task=None)
    started._on_prerun(task_id=12, task=None)  # not a str: ignored
    assert tail.new_tags() == {"11:3"}
    assert started.read(consumer) == {"good", "raising", "props", "listprops"}
    for t in ("good", "raising", "props", "listprops"):
        started.task_finished(t)


def test_a_record_half_written_is_read_when_whole(consumer: str) -> None:
    tail = started.Tail(consumer)
    started.task_started("first", "1:1")
    path = next(p for p in started._ledger_dirs() if (p / started.OWNER).read_text() == consumer)
    mine = path / str(os.getpid())
    with open(mine, "ab") as f:
        f.write(b"second\n#2:")
    assert tail.new_tags() == {"1:1"}
    with open(mine, "ab") as f:
        f.write(b"1\n")
    assert tail.new_tags() == {"2:1"}
    started.task_finished("first")


def test_a_rotated_ledger_is_read_again_and_keeps_the_running_deliveries(consumer: str) -> None:
    tail = started.Tail(consumer)
    started.task_started("still-running", "1:1")
    assert tail.new_tags() == {"1:1"}
    written = started.ROTATE_AT // 20  # well past ROTATE_AT
    for i in range(written):
        started.task_started(f"done-{i:026d}", f"{i + 2}:1")
        started.task_finished(f"done-{i:026d}")
    started.task_started("after", "99999:1")
    tags = tail.new_tags()
    # Rotated meanwhile: read from the start of the new file, which holds
    # the running ones (reported again: harmless) and what came after.
    assert "99999:1" in tags and len(tags) < written
    started.task_finished("still-running")
    started.task_finished("after")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=12), TAGS)),
        max_size=12,
        unique_by=lambda record: record[0],  # one running task per id (as the ledger keeps them)
    )
)
def test_tags_read_back_are_exactly_the_valid_ones_written(consumer: str, records: list[tuple[str, str | None]]) -> None:
    tail = started.Tail(consumer)
    tail.new_tags()  # what earlier examples wrote
    for task_id, tag in records:
        started.task_started(task_id, tag)
    expected = {tag for _, tag in records if tag is not None and started._TAG.fullmatch(tag)}
    assert tail.new_tags() == expected
    # And the quarantine still finds every task id (one that looks like a
    # tag line too): missing one would hide a crash.
    if records:
        ids = started.read(consumer)
        assert ids is not None and {t for t, _ in records if t and "\n" not in t} <= ids
    for task_id, _ in records:
        started.task_finished(task_id)
