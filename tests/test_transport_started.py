"""The started-task ledger of Celery consumers (transport/started.py), on
real files in the private runtime directory."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from jobtable.transport import started


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
