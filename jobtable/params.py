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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from .exceptions import ConfigurationError, ModelNotFound

JSON_SCALARS = (str, int, float, bool, type(None))
MODEL_MARKER = "jobtable.model"

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


def _as(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


class ParameterError(TypeError):
    """A job argument that jobtable cannot store."""


def encode(value: Any, where: str) -> Any:
    """A JSON-compatible form of ``value``; ``where`` names it in errors."""
    if isinstance(value, JSON_SCALARS):
        return value
    if isinstance(value, list):
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return _as("tuple", [encode(item, f"{where}[{i}]") for i, item in enumerate(value)])
    if isinstance(value, dict):
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParameterError(
                    f"{where} has a key {key!r} of type {type(key).__name__}: job parameters are stored as JSON, "
                    "whose object keys are strings. Convert the keys to str."
                )
            encoded[key] = encode(item, f"{where}[{key!r}]")
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
        return _as(MODEL_MARKER, reference)
    raise ParameterError(
        f"{where} is of type {type(value).__module__}.{type(value).__qualname__}, which jobtable cannot store: "
        "job parameters are JSON (str, int, float, bool, None, list, tuple, dict), datetime, date, time, "
        "timedelta, UUID, Decimal, bytes or SQLAlchemy ORM instances. Pass one of those (an id, say) instead."
    )


def decode(value: Any) -> Any:
    """Inverse of ``encode``; ORM references become ``ModelReference`` objects."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, dict):
        if value.keys() == {"__type__", "__value__"}:
            marker, inner = value["__type__"], value["__value__"]
            if marker == "tuple":
                return tuple(decode(item) for item in inner)
            if marker == "dict":
                return {key: decode(item) for key, item in inner.items()}
            if marker == MODEL_MARKER:
                return ModelReference(inner["model"], tuple(inner["pk"]))
            decoder = _DECODERS.get(marker)
            if decoder is None:
                raise ValueError(f"Unknown parameter type marker {marker!r} in a job message.")
            return decoder(inner)
        return {key: decode(item) for key, item in value.items()}
    return value


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
        model = _import(self.model)
        instance = session.get(model, self.pk if len(self.pk) > 1 else self.pk[0])
        if instance is None:
            raise ModelNotFound(
                f"{where}: {model.__name__} with primary key {', '.join(map(repr, self.pk))} no longer exists; "
                "it was deleted after the job was enqueued. Make the job handle a missing row, "
                "or pass the id and look it up in run()."
            )
        return instance


def _model_reference(value: Any) -> dict[str, Any] | None:
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
    return {"model": f"{cls.__module__}:{cls.__qualname__}", "pk": list(identity)}


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
