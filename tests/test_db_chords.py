"""db/chords.py: the Celery backend's chord parts, counted once each, in
header order, on both dialects (the worker-level behaviour is in
compat_tests/test_parity.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from jobtable.db import chords, clock, results, tables
from jobtable.db.engine import get_engine
from tests.conftest import ALL_DIALECTS

pytestmark = pytest.mark.dialects(*ALL_DIALECTS)


def _start(conn: Connection, group_id: str) -> None:
    results.start_chord(conn, group_id, "{}", clock.utcnow())


def test_each_part_counts_once_and_reads_in_header_order(db_url: str) -> None:
    now = clock.utcnow()
    with get_engine(db_url).begin() as conn:
        _start(conn, "g1")
        results.set_chord_size(conn, "g1", 3)
        assert chords.record_part(conn, "g1", 2, "t2", '"two"', now) == (1, 3)
        assert chords.record_part(conn, "g1", 2, "t2", '"two again"', now) is None  # a redelivered duplicate
        assert chords.record_part(conn, "g1", 0, "t0", '"zero"', now) == (2, 3)
        assert chords.record_part(conn, "g1", 1, "t1", '"one"', now) == (3, 3)
        assert chords.parts(conn, "g1") == ['"zero"', '"one"', '"two"']
        chords.delete_parts(conn, "g1")
        assert chords.parts(conn, "g1") == []
        assert conn.execute(select(tables.group.c.id)).scalars().all() == ["g1"]


def test_an_added_part_is_waited_for_even_before_the_size_is_set(db_url: str) -> None:
    now = clock.utcnow()
    with get_engine(db_url).begin() as conn:
        _start(conn, "g2")
        # A header task may run, and add to the chord, before Celery sets the size.
        assert chords.add_part(conn, "g2")
        assert chords.record_part(conn, "g2", 0, "t0", "0", now) == (0, None)
        results.set_chord_size(conn, "g2", 2)
        # The added task shares its adder's index: keyed by its own id too.
        assert chords.record_part(conn, "g2", 0, "added", "100", now) == (1, 2)
        assert chords.record_part(conn, "g2", 1, "t1", "1", now) == (2, 2)
        assert len(chords.parts(conn, "g2")) == 3


def test_a_part_of_an_unknown_chord_leaves_nothing(db_url: str) -> None:
    with get_engine(db_url).begin() as conn:
        assert chords.record_part(conn, "gone", 0, "t0", "0", clock.utcnow()) is None
        assert not chords.add_part(conn, "gone")
        assert conn.execute(select(func.count()).select_from(tables.group)).scalar() == 0


def test_a_long_task_id_fits(db_url: str) -> None:
    with get_engine(db_url).begin() as conn:
        _start(conn, "g3")
        results.set_chord_size(conn, "g3", 1)
        assert chords.record_part(conn, "g3", None, "x" * 255, "1", clock.utcnow()) == (1, 1)
        assert chords.parts(conn, "g3") == ["1"]
