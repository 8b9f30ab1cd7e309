"""Property tests: parameter encoding and the message format round trip, or
refuse with a jobtable error -- never another exception."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, time, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobtable import limits, messages, params
from jobtable.exceptions import EnqueueError, ParameterError
from jobtable.message_checks import checked_row

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with everything in it: NUL, controls, astral characters and lone surrogates.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
    st.datetimes(timezones=st.none() | st.just(timezone.utc) | st.timezones()),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.binary(max_size=16),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equality, with NaN equal to itself and types kept (a tuple is not a list)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b) and not (isinstance(a, int) and isinstance(b, int) and type(a) in (int, bool)):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (datetime, time)) and a.tzinfo is not None:
        # A named zone is stored as its UTC offset at that moment: the same
        # wall time and offset (== is False across zones at ambiguous times).
        return a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()
    return bool(a == b)


def has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return limits.surrogate_at(value) is not None
    if isinstance(value, (list, tuple)):
        return any(has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return False


@SETTINGS
@given(values)
def test_encode_decode_round_trips_or_refuses_clearly(value: Any) -> None:
    try:
        encoded = params.encode(value, "argument 'x'")
    except ParameterError as exc:
        assert "argument 'x'" in str(exc)
        assert has_surrogate(value)
        return
    text = messages.dumps(encoded)
    text.encode("utf-8")  # storable as UTF-8 text
    assert "NaN" not in text.replace('"nan"', "") or "nan" in text.lower()
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(name)))  # strict JSON
    assert same(params.decode(json.loads(text)), value)


@SETTINGS
@given(st.recursive(st.none() | st.integers() | any_text | st.floats(), lambda i: st.lists(i) | st.dictionaries(any_text, i), max_leaves=30))
def test_decode_of_any_json_returns_or_refuses_clearly(value: Any) -> None:
    # Arbitrary JSON, with marker-shaped objects sprinkled in below.
    try:
        params.decode(value)
    except ParameterError:
        pass


markers = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(["tuple", "dict", "datetime", "date", "time", "timedelta", "decimal", "uuid", "bytes",
                                     "base64", "float", params.MODEL_MARKER, "nope", ""]) | any_text,
        "__value__": st.none() | st.integers() | any_text | st.lists(st.integers() | any_text, max_size=3)
        | st.dictionaries(st.sampled_from(["hex", "model", "pk", "x"]), st.integers() | any_text | st.lists(st.integers(), max_size=2), max_size=3),
    }
)


@SETTINGS
@given(st.lists(markers, max_size=3))
def test_malformed_markers_are_parameter_errors(value: list[Any]) -> None:
    try:
        params.decode(value)
    except ParameterError as exc:
        str(exc).encode("utf-8")


def test_depth_limits_both_ways() -> None:
    value: Any = 1
    for _ in range(limits.MAX_DEPTH):  # MAX_DEPTH nested lists: accepted
        value = [value]
    assert params.decode(params.encode(value, "v")) == value
    deeper: Any = [value]
    for encode_or_decode in (lambda: params.encode(deeper, "v"), lambda: params.decode(json.loads(json.dumps(deeper)))):
        try:
            encode_or_decode()
        except ParameterError as exc:
            assert "nested more than" in str(exc)
        else:
            raise AssertionError("not refused")


names = st.text(st.characters(codec=None, exclude_categories=()), min_size=0, max_size=300)


@SETTINGS
@given(
    task_name=names,
    task_id=names,
    queue=names,
    key=st.none() | names,
    args=st.lists(values, max_size=3),
    kwargs=st.dictionaries(any_text, values, max_size=3),
    priority=st.integers(),
    retries=st.integers(),
    attempt=st.integers(min_value=-5, max_value=2**40),
)
def test_task_message_row_values_decode_task_round_trip(
    task_name: str, task_id: str, queue: str, key: str | None, args: list[Any], kwargs: dict[str, Any],
    priority: int, retries: int, attempt: int,
) -> None:
    from jobtable.db.clock import utcnow

    now = utcnow()
    try:
        enc_args = [params.encode(v, f"argument {i}") for i, v in enumerate(args)]
        enc_kwargs = {k: params.encode(v, f"argument {k!r}") for k, v in kwargs.items()}
        envelope = messages.task_message(
            task_name=task_name, task_id=task_id, args=enc_args, kwargs=enc_kwargs, queue=queue,
            priority=priority, eta=None, attempt=attempt, retries=retries, concurrency_key=key,
        )
        row = checked_row(envelope, queue, now, source="a test")
    except EnqueueError as exc:
        text = str(exc)
        text.encode("utf-8")
        assert "[SQL" not in text
        return
    # Accepted: every column fits, and the stored message decodes to the call.
    assert 0 < len(row["task_id"]) <= 255 and len(row["queue"]) <= 255 and "\x00" not in row["queue"]
    assert -32768 <= row["priority"] <= 32767 and 1 <= row["attempt"] < 2**31
    row["message"].encode("utf-8")
    call = messages.decode_task(row["message"])
    assert (call.task_name, call.task_id) == (task_name, task_id or call.task_id)
    assert same(params.decode(call.args), args) and same(params.decode(call.kwargs), kwargs)
    assert row["concurrency_key"] == (key or None)


@SETTINGS
@given(st.dictionaries(any_text, values, max_size=4))
def test_kombu_headers_are_stored_or_refused_clearly(headers: dict[str, Any]) -> None:
    from jobtable.db.clock import utcnow

    envelope = {"body": "{}", "content-type": "application/json", "content-encoding": "utf-8",
                "headers": headers, "properties": {"delivery_info": {}, "priority": 0}}
    try:
        row = checked_row(envelope, "q", utcnow(), source="Kombu publish", clamp_priority=True, escape_surrogates=True)
    except EnqueueError as exc:
        assert "Kombu publish" in str(exc)
        return
    stored = json.loads(row["message"])
    row["message"].encode("utf-8")
    assert stored["headers"].keys() == headers.keys()


def test_uuid_and_decimal_examples() -> None:
    for value in (uuid.UUID(int=0), Decimal("sNaN"), Decimal("-0"), (), {"__type__": "x", "__value__": 1}):
        assert same(params.decode(json.loads(messages.dumps(params.encode(value, "v")))), value)
