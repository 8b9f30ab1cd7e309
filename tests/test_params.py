"""Job parameters round-trip through JSON; anything else fails at enqueue."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from kombu.utils import json as kombu_json

import jobtable  # noqa: F401  (registers the markers with kombu)
from jobtable import params
from jobtable.enqueue import encode_arguments
from jobtable.execution import instantiate
from tests.sample_jobs import Echo

VALUES: list[Any] = [
    datetime(2026, 11, 24, 9, 30, 1, 5, tzinfo=timezone.utc),
    datetime(2026, 1, 1, 12, 0),
    date(2026, 2, 28),
    time(23, 59, 58, 123),
    timedelta(days=-1, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("3.14159265358979323846"),
    (1, "two", (3.0, None)),
    b"\x00\xffbytes",
    {"__type__": "datetime", "__value__": "a user dict that looks like a marker"},
    {"nested": [{"when": date(2020, 1, 1), "ids": (uuid.UUID(int=1),)}]},
    [1, 2.5, "s", True, None],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: Any) -> None:
    encoded = params.encode(value, "x")
    text = kombu_json.dumps(encoded)
    assert params.decode(kombu_json.loads(text, object_hook=lambda o: o)) == value
    decoded = params.decode(encoded)
    assert type(decoded) is type(value)


@pytest.mark.parametrize("value", VALUES[:8], ids=lambda v: type(v).__name__)
def test_a_celery_worker_decodes_the_same_values(value: Any) -> None:
    # kombu's own json (what a Celery worker uses) knows every marker.
    assert kombu_json.loads(kombu_json.dumps(params.encode(value, "x"))) == value


def test_job_arguments_round_trip_through_instantiate() -> None:
    job = Echo(
        (1, 2),
        datetime(2026, 1, 1, tzinfo=timezone.utc),
        amount=Decimal("1.10"),
        ids=[uuid.UUID(int=5)],
        wait=timedelta(minutes=3),
    )
    args, kwargs = encode_arguments(job)
    rebuilt = instantiate(Echo.job_name(), args, kwargs)
    assert rebuilt.args == job.args
    assert rebuilt.kwargs == job.kwargs


class Opaque:
    pass


def test_unsupported_argument_names_argument_and_type() -> None:
    with pytest.raises(TypeError, match=r"Echo argument 'extra'\['deep'\]\[0\] is of type tests.test_params.Opaque"):
        encode_arguments(Echo(extra={"deep": [Opaque()]}))
    with pytest.raises(TypeError, match=r"Echo argument 1 is of type .*set.*Pass one of those"):
        encode_arguments(Echo("fine", {1, 2}))


def test_non_string_dict_keys_are_refused() -> None:
    with pytest.raises(TypeError, match="key 1 of type int.*Convert the keys to str"):
        encode_arguments(Echo({1: "a"}))
