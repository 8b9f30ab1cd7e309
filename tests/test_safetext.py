"""Property tests: the result-row sanitizers never raise, and their output is
UTF-8 encodable, NUL-free and within its caps, whatever the input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobtable import params, safetext
from tests.test_params_properties import same

# Every code point, lone surrogates and NUL included.
texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=300)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(texts, inner, max_size=5),
        st.dictionaries(st.integers(), inner, max_size=2),  # not JSON: falls back
    ),
    max_leaves=30,
)
limits = st.integers(min_value=1, max_value=400)


def storable(text: str) -> None:
    assert isinstance(text, str) and "\x00" not in text
    text.encode("utf-8")


class Hostile:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __str__(self) -> str:
        raise RuntimeError(self.inner)

    def __repr__(self) -> str:
        raise SystemExit(1)


@settings(max_examples=200, deadline=None)
@given(texts, limits, st.booleans())
def test_clean(text: str, limit: int, keep_end: bool) -> None:
    out = safetext.clean(text, limit, keep_end=keep_end)
    storable(out)
    assert len(out) <= limit
    if len(text) <= limit and "\x00" not in text and out == text:
        text.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(values, limits)
def test_safe_str_and_repr(value: Any, limit: int) -> None:
    for out in (safetext.safe_str(value, limit), safetext.safe_repr(value, limit),
                safetext.safe_str(Hostile(value), limit), safetext.safe_repr([value, Hostile(value)], limit)):
        storable(out)
        assert len(out) <= limit


@settings(max_examples=150, deadline=None)
@given(texts)
def test_exception_fields(message: str) -> None:
    try:
        raise ValueError(message)
    except ValueError as exc:
        fields = safetext.exception_fields(exc)
    for key, cap in (("error_type", safetext.NAME_LIMIT), ("error_message", safetext.MESSAGE_LIMIT),
                     ("traceback", safetext.TRACEBACK_LIMIT)):
        storable(fields[key])
        assert len(fields[key]) <= cap
    assert fields["error_type"] == "ValueError"


def encode(value: Any) -> Any:
    return params.encode(value, "the return value")


@settings(max_examples=200, deadline=None)
@given(values, st.integers(min_value=0, max_value=5000), st.integers(min_value=1, max_value=6))
def test_encode_json(value: Any, max_bytes: int, depth: int) -> None:
    out = safetext.encode_json(value, encode, max_bytes=max_bytes, max_depth=depth)
    storable(out)
    assert len(out.encode("utf-8")) <= max(max_bytes, safetext.MIN_RETURN_LIMIT)
    decoded = json.loads(out)
    if not (isinstance(decoded, str) and decoded.startswith("[jobtable: the return value was not stored")):
        # Stored as JSON: it reads back as the value.
        # NaN-aware, types kept (a text value that merely contains "nan" is
        # no excuse).
        assert same(params.decode(decoded), value), (value, out)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=300))
def test_encode_json_deep_cyclic_hostile(depth: int) -> None:
    deep: list[Any] = []
    for _ in range(depth * 400):
        deep = [deep]
    cycle: list[Any] = [depth]
    cycle.append(cycle)
    for value in (deep, cycle, Hostile(depth), {"k": Hostile(depth)}):
        out = safetext.encode_json(value, encode, max_bytes=2000)
        storable(out)
        assert json.loads(out).startswith("[jobtable: the return value was not stored as JSON")
