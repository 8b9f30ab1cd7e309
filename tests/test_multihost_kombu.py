"""Kombu consumers on many hosts, across a real (namespaced) network
(issue 18, part 1): real ``celery worker`` processes on the jobtable
transport, each on its own namespace host (tests/netns.py), one of them cut
off from the database for longer than its leases.

What a partition of a consumer host may and may not do:

- nothing is lost: the cut-off consumer's leased message is taken over by a
  peer once its lease lapses (by the database's clock), and run there;
- the only message run twice is the one the cut-off consumer was running
  when the link went down (``acks_late``: at least once, as on any broker
  whose consumer is unreachable past its visibility timeout); no other
  message runs twice;
- when the host comes back, its late ack of that message deletes nothing:
  the row is the peer's now (acks are guarded by the consumer that holds
  the row), so a peer that died at that moment would still get it back;
- the cut-off worker consumes again once its link is back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import text

from jobtable.db import engine as db_engine

from tests.conftest import empty_tables
from tests.netns import Host, Topology, migrated_topology
from tests.netns_celery import QUEUE, TRANSPORT_OPTIONS
from tests.netns_jobs import lines
from tests.polling import wait_for as _wait_for

HOSTS = ("k0", "k1", "kop")  # two consumer hosts; the operator (this process) goes through kop


@pytest.fixture(scope="module")
def net() -> Iterator[Topology]:
    with migrated_topology(HOSTS, "kombu") as topo:
        yield topo


@pytest.fixture
def cluster(net: Topology) -> Iterator[Topology]:
    empty_tables(net.url())
    for host in net.hosts.values():
        (host.dir / "out.log").unlink(missing_ok=True)
    yield net
    for host in net.hosts.values():
        host.heal()
        host.stop_all()
    db_engine.reset_engines()


def start_celery(net: Topology, name: str) -> Host:
    host = net.hosts[name]
    env = host.env(dict(os.environ))
    env["JOBTABLE_DATABASE_URL"] = net.url(name)
    host.start([sys.executable, "-m", "celery", "-A", "tests.netns_celery", "worker", "-P", "solo",
                "-Q", QUEUE, "-l", "info", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat"], env)
    return host


def outputs(net: Topology) -> str:
    return "\n".join(f"---- {name} (exit codes {[p.poll() for p in host.procs]})\n{host.output()[-5000:]}"
                     for name, host in net.hosts.items())


def rows_of_queue(net: Topology) -> list[Any]:
    engine = db_engine.get_engine(net.url())
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id, task_id, state, worker_id FROM jobtable_request "
                                      "WHERE queue = :q ORDER BY id"), {"q": QUEUE}))


def test_a_cut_off_consumer_s_message_is_taken_over_and_its_late_ack_deletes_nothing(
    cluster: Topology, tmp_path: Path
) -> None:
    net = cluster
    work = net.base / "work" / "takeover"
    (work / "release").mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)
    log, release = str(work / "runs.log"), work / "release"

    def wait_for(predicate: Any, timeout: float, what: str) -> Any:
        try:
            return _wait_for(predicate, timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{lines(log)}\n{rows_of_queue(net)}\n{outputs(net)}") from None

    def started(tag: str) -> list[str]:
        return [line[2] for line in lines(log) if line[:2] == ["start", tag]]

    def ended(tag: str) -> list[str]:
        return [line[2] for line in lines(log) if line[:2] == ["end", tag]]

    sender = Celery("operator", broker="jobtable+" + net.url())
    sender.conf.broker_transport_options = TRANSPORT_OPTIONS

    def send(name: str, *args: Any) -> None:
        sender.send_task(name, args=args, queue=QUEUE)

    try:
        start_celery(net, "k0")
        send("netns.hold", log, "hold", str(release))
        wait_for(lambda: started("hold") == ["k0"], 60, "k0 to start the hold")
        # k0 (solo pool, prefetch 1, acks late) holds only the running hold:
        # k1 takes everything else.
        start_celery(net, "k1")
        for i in range(4):
            send("netns.mark", log, f"m{i}")
        wait_for(lambda: all(ended(f"m{i}") for i in range(4)), 60, "k1 to run the marks")
        assert all(started(f"m{i}") == ["k1"] for i in range(4)), lines(log)

        net.hosts["k0"].cut()
        try:
            # The hold's lease lapses (6 s, renewals cannot reach the
            # database); k1 takes it over and runs it.
            wait_for(lambda: started("hold") == ["k0", "k1"], 60, "k1 to take the hold over")
            [taken] = rows_of_queue(net)
            assert taken.state == "running", taken
            # k0's hold ends while k0 is still cut off: its ack cannot reach
            # the database yet.
            (release / "k0").touch()
            wait_for(lambda: ended("hold") == ["k0"], 30, "k0's hold to end")
        finally:
            net.hosts["k0"].heal()
        # k0 sends its late ack and consumes again: k1 is busy with the
        # hold, so k0 runs every later mark.  (Its solo pool was inside the
        # hold for the whole cut, so it may never have seen the outage; had
        # it polled, it would have reconnected by itself.)
        for i in range(4, 12):
            send("netns.mark", log, f"m{i}")
        wait_for(lambda: all(ended(f"m{i}") for i in range(4, 12)), 90, "k0 to run the later marks")
        assert all(started(f"m{i}") == ["k0"] for i in range(4, 12)), lines(log)
        # The hold's row is still there, held for k1: k0's late ack deleted nothing.
        held = wait_for(lambda: (lambda rows: rows if len(rows) == 1 else None)(rows_of_queue(net)), 30,
                        "k0's acks of the marks to be written")
        assert [(r.id, r.state, r.worker_id) for r in held] == [(taken.id, "running", taken.worker_id)], (held, taken)
        (release / "k1").touch()
        wait_for(lambda: ended("hold") == ["k0", "k1"], 30, "k1's hold to end")
        wait_for(lambda: not rows_of_queue(net), 30, "k1's ack to delete the row")
        out = outputs(net)
        # Nothing lost, nothing else run twice, both workers still running.
        for i in range(12):
            assert len(started(f"m{i}")) == 1 and ended(f"m{i}") == started(f"m{i}"), (i, lines(log), out)
        assert started("hold") == ["k0", "k1"], (lines(log), out)
        assert all(p.poll() is None for name in ("k0", "k1") for p in net.hosts[name].procs), out
    finally:
        sender.close()
