"""Job parameters <-> JSON.

Values are stored as plain JSON where JSON has the type, and otherwise as
``{"__type__": name, "__value__": ...}`` -- the marker format of
``kombu.utils.json``, so a Celery worker decodes the same message to the same
values (``register_with_kombu`` teaches Kombu the types it lacks).

SQLAlchemy ORM instances are stored as references (model path and primary
key) and loaded again, through the configured session factory, when the job
runs.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from . import limits
from .exceptions import ConfigurationError, ModelNotFound, UnknownModel
from .exceptions import ParameterError as ParameterError  # its old home: params.ParameterError

MODEL_MARKER = "jobtable.model"


def _decode_float(value: Any) -> float:
    # Only non-finite floats are stored this way: JSON has no Infinity or NaN.
    if not isinstance(value, str):
        raise ValueError("expected 'inf', '-inf' or 'nan'")
    return float(value)


# name -> (type, encode, decode).  datetime before date: a datetime is a date.
_TYPES: list[tuple[str, type, Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("datetime", datetime, datetime.isoformat, datetime.fromisoformat),
    ("date", date, date.isoformat, lambda v: datetime.fromisoformat(v).date()),
    ("time", time, time.isoformat, time.fromisoformat),
    ("timedelta", timedelta, lambda v: [v.days, v.seconds, v.microseconds], lambda v: timedelta(*v)),
    ("decimal", Decimal, str, Decimal),
    ("uuid", uuid.UUID, lambda v: {"hex": v.hex}, lambda v: uuid.UUID(**v)),
]
_DECODERS: dict[str, Callable[[Any], Any]] = {name: decode for name, _t, _e, decode in _TYPES}
_DECODERS["bytes"] = lambda v: v.encode("utf-8")
_DECODERS["base64"] = lambda v: base64.b64decode(v.encode("utf-8"))
_DECODERS["float"] = _decode_float


def _as(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def encode(value: Any, where: str, *, allow_surrogates: bool = False) -> Any:
    """A JSON-compatible form of ``value``; ``where`` names it in errors.

    Raises ``ParameterError`` (an ``EnqueueError`` and a ``TypeError``) for a
    value that cannot be stored: an unknown type, a non-string dict key, text
    with a lone surrogate (not Unicode: UTF-8 cannot hold it), an integer too
    long for JSON, nesting deeper than ``limits.MAX_DEPTH`` (or a value that
    contains itself).  Infinite and NaN floats, which JSON lacks, are stored
    as ``float`` markers and come back as they were.  NUL characters are
    fine: JSON writes them as ``\\u0000``.

    ``allow_surrogates``: keep lone surrogates (for return values, which the
    result writer stores as ``\\udXXX`` escapes that read back exactly; a
    job's return value must be recorded, not refused).
    """
    return _encode(value, where, 0, allow_surrogates)


def _encode(value: Any, where: str, depth: int, surrogates: bool = False) -> Any:
    if isinstance(value, str):
        if not surrogates and not value.isascii():
            _check_text(value, where)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if limits.int_too_long(value):
            raise ParameterError(
                f"{where} is an integer of {value.bit_length():,} bits, too long to write as JSON "
                f"(over sys.get_int_max_str_digits() = {sys.get_int_max_str_digits()} digits). Pass it as a string."
            )
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return _as("float", "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, tuple, dict)) and depth >= limits.MAX_DEPTH:
        raise ParameterError(
            f"{_trim(where)} is nested more than {limits.MAX_DEPTH} levels deep, or contains itself: job parameters "
            "are stored as JSON, which workers decode level by level. Flatten the value, or store it "
            "elsewhere and pass a reference (an id, a path)."
        )
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]", depth + 1, surrogates) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return _as("tuple", [_encode(item, f"{where}[{i}]", depth + 1, surrogates) for i, item in enumerate(value)])
    if isinstance(value, dict):
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParameterError(
                    f"{where} has a key {limits.short(key)} of type {type(key).__name__}: job parameters are "
                    "stored as JSON, whose object keys are strings. Convert the keys to str."
                )
            if not surrogates and not key.isascii():
                _check_text(key, f"{where} key {limits.short(key)}")
            encoded[key] = _encode(item, f"{where}[{key!r}]", depth + 1, surrogates)
        if encoded.keys() == {"__type__", "__value__"}:
            # A user dict that looks like a marker must not decode as one.
            return _as("dict", encoded)
        return encoded
    for name, kind, encoder, _decode in _TYPES:
        if isinstance(value, kind):
            return _as(name, encoder(value))
    if isinstance(value, bytes):
        return _as("base64", base64.b64encode(value).decode("ascii"))
    reference = _model_reference(value)
    if reference is not None:
        model, identity = reference
        pk = [_encode(item, f"{where} primary key", depth + 1, surrogates) for item in identity]
        return _as(MODEL_MARKER, {"model": model, "pk": pk})
    raise ParameterError(
        f"{where} is of type {type(value).__module__}.{type(value).__qualname__}, which jobtable cannot store: "
        "job parameters are JSON (str, int, float, bool, None, list, tuple, dict), datetime, date, time, "
        "timedelta, UUID, Decimal, bytes or SQLAlchemy ORM instances. Pass one of those (an id, say) instead."
    )


def _trim(where: str) -> str:
    # A path 100 levels deep ("x[0][0][0]...") says nothing more than its start.
    return where if len(where) <= 120 else where[:100] + "..."


def _check_text(value: str, where: str) -> None:
    at = limits.surrogate_at(value)
    if at is not None:
        raise ParameterError(
            f"{where} contains a lone surrogate ({value[at]!r}) at position {at}: it is not valid Unicode "
            "text, and job parameters are stored as UTF-8 JSON. Decode the bytes it came from with "
            "errors='replace', or pass the bytes themselves."
        )


def decode(value: Any, where: str = "a job parameter") -> Any:
    """Inverse of ``encode``; ORM references become ``ModelReference`` objects.

    A stored value that is malformed (an unknown or broken marker, nesting
    deeper than ``limits.MAX_DEPTH``) raises ``ParameterError`` naming it.
    """
    return _decode(value, where, 0)


def _decode(value: Any, where: str, depth: int) -> Any:
    if not isinstance(value, (list, dict)):
        return value
    if depth >= limits.MAX_DEPTH:
        raise ParameterError(
            f"{_trim(where)} is nested more than {limits.MAX_DEPTH} levels deep; jobtable does not decode it."
        )
    if isinstance(value, list):
        return [_decode(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if value.keys() != {"__type__", "__value__"}:
        return {key: _decode(item, f"{where}[{key!r}]", depth + 1) for key, item in value.items()}
    marker, inner = value["__type__"], value["__value__"]
    try:
        if marker == "tuple":
            if not isinstance(inner, list):
                raise ValueError("expected a list")
            return tuple(_decode(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(inner))
        if marker == "dict":
            if not isinstance(inner, dict):
                raise ValueError("expected an object")
            return {key: _decode(item, f"{where}[{key!r}]", depth + 1) for key, item in inner.items()}
        if marker == MODEL_MARKER:
            return _reference(inner, where, depth)
        decoder = _DECODERS.get(marker) if isinstance(marker, str) else None
        if decoder is None:
            raise ParameterError(
                f"{where} has an unknown type marker {limits.short(marker)}: the message was written by "
                "something other than jobtable or Kombu's JSON. Send the value as plain JSON."
            )
        return decoder(inner)
    except ParameterError:
        raise
    except Exception as exc:
        text = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")[:200]
        raise ParameterError(
            f"{where}: the stored {marker} value {limits.short(inner)} is malformed ({type(exc).__name__}: {text})."
        ) from None


def _reference(inner: Any, where: str, depth: int) -> ModelReference:
    model, pk = (inner.get("model"), inner.get("pk")) if isinstance(inner, dict) else (None, None)
    if not isinstance(model, str) or not isinstance(pk, list) or not pk:
        raise ValueError("expected {'model': 'module:Class', 'pk': [...]}")
    return ModelReference(model, tuple(_decode(item, f"{where} primary key", depth + 1) for item in pk))


# -- ORM references -------------------------------------------------------


class ModelReference:
    """An ORM instance stored by reference; ``load`` fetches it again."""

    __slots__ = ("model", "pk")

    def __init__(self, model: str, pk: tuple[Any, ...]) -> None:
        self.model = model
        self.pk = pk

    def __repr__(self) -> str:
        return f"<ModelReference {self.model} pk={self.pk!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelReference) and (self.model, self.pk) == (other.model, other.pk)

    def __hash__(self) -> int:
        return hash((self.model, self.pk))

    def load(self, session: Any, where: str) -> Any:
        model = loaded_model(self.model, where)
        try:
            instance = session.get(model, self.pk if len(self.pk) > 1 else self.pk[0])
        except Exception as exc:
            # A key of the wrong arity or type: say so without the SQL text
            # (a DBAPIError's str() quotes the statement and its parameters).
            session.rollback()
            orig = getattr(exc, "orig", None) or exc
            text = str(orig).splitlines()[0][:200] if str(orig) else ""
            raise ModelNotFound(
                f"{where}: cannot load {model.__name__} with primary key {limits.short(self.pk)}: "
                f"{type(orig).__name__}: {text}"
            ) from None
        if instance is None:
            raise ModelNotFound(
                f"{where}: {model.__name__} with primary key {', '.join(map(repr, self.pk))} no longer exists; "
                "it was deleted after the job was enqueued. Make the job handle a missing row, "
                "or pass the id and look it up in run()."
            )
        return instance


def _model_reference(value: Any) -> tuple[str, tuple[Any, ...]] | None:
    try:
        from sqlalchemy import inspect as sa_inspect
        from sqlalchemy.orm import InstanceState
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    state = sa_inspect(value, raiseerr=False)
    if not isinstance(state, InstanceState):
        return None
    identity = state.identity
    if identity is None:
        raise ParameterError(
            f"{type(value).__name__} instance has no primary key yet: flush or commit it before enqueueing a job "
            "that takes it, so the worker can load it."
        )
    cls = state.class_
    return f"{cls.__module__}:{cls.__qualname__}", tuple(identity)


def loaded_model(path: str, where: str = "a job parameter") -> type:
    """The mapped class ``path`` ("module:Class") names, looked up among the
    modules this process has already imported -- never imported on behalf of
    a message, which anyone who can write to the queue can craft.  The job
    modules and the session factory's module (imported first) bring in the
    models jobs take."""
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    obj: Any = sys.modules.get(module_name)
    for part in attribute.split("."):
        if obj is None or not part.isidentifier() or part.startswith("__"):
            obj = None
            break
        # Static lookup: no module __getattr__ hook (which may import) runs.
        obj = inspect.getattr_static(obj, part, None)
    if isinstance(obj, type) and _is_mapped(obj):
        return obj
    raise UnknownModel(
        f"{where} refers to the model {limits.short(path)}, which is not a SQLAlchemy model loaded in this "
        "worker. jobtable loads models only from modules the worker has imported (its job modules and the "
        "session factory's module), never from a module a message names. If the model is yours, import its "
        "module in the job's module."
    )


def _is_mapped(cls: type) -> bool:
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy.orm import Mapper

    try:
        return isinstance(sa_inspect(cls, raiseerr=False), Mapper)
    except Exception:
        return False


def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def contains_references(value: Any) -> bool:
    if isinstance(value, ModelReference):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains_references(item) for item in value)
    if isinstance(value, dict):
        return any(contains_references(item) for item in value.values())
    return False


def resolve(value: Any, session: Any, where: str) -> Any:
    """Replace ModelReferences inside ``value`` with loaded instances."""
    if isinstance(value, ModelReference):
        return value.load(session, where)
    if isinstance(value, list):
        return [resolve(item, session, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(resolve(item, session, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, dict):
        return {key: resolve(item, session, f"{where}[{key!r}]") for key, item in value.items()}
    return value


@contextmanager
def model_session() -> Iterator[Any]:
    """A session from the configured ``session_factory`` setting."""
    from .settings import get_settings

    path = get_settings().session_factory
    if not path:
        raise ConfigurationError(
            "A job parameter is a SQLAlchemy ORM instance, but no session factory is configured: "
            "set JOBTABLE_SESSION_FACTORY (or jobtable.configure(session_factory=...)) to the dotted path "
            "of a callable returning a Session, e.g. 'myapp.db:Session'."
        )
    factory = _import(path) if isinstance(path, str) else path
    session = factory()
    try:
        yield session
    finally:
        session.close()


def register_with_kombu() -> None:
    """Teach ``kombu.utils.json`` the markers Kombu lacks, so a Celery worker
    decodes a Job's parameters as jobtable does.  (Tuples and marker-like dicts
    never reach an encoder -- JSON has them -- but their decoders are needed.)
    """
    from kombu.utils.json import register_type

    encode_delta = next(encoder for name, _t, encoder, _d in _TYPES if name == "timedelta")
    register_type(timedelta, "timedelta", encode_delta, _DECODERS["timedelta"])
    register_type(tuple, "tuple", list, tuple)
    register_type(dict, "dict", dict, dict)
    register_type(
        ModelReference,
        MODEL_MARKER,
        lambda ref: {"model": ref.model, "pk": list(ref.pk)},
        lambda v: ModelReference(v["model"], tuple(v["pk"])),
    )
    # Kombu's encoder writes floats itself (it never asks for these); its
    # decoder needs the marker that stands for inf, -inf and NaN.
    register_type(float, "float", float, _decode_float)
