"""What a valid value of each setting is, and the error when it is not.

``settings.Settings`` attaches a ``Rule`` to each field; ``check`` turns a
raw value (a string from the environment, a TOML value, a ``configure()``
argument, a command-line flag) into the field's type and checks its range,
or raises a ``ConfigurationError`` that names the setting, where the value
came from, the value (database URLs with their password masked) and the fix.

This module imports nothing of jobtable's above ``exceptions`` and ``cron``
and ``dburls`` (the database URL check) and ``routing.routes`` (the broker
routes' check, on ``dburls`` too).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from .cron import CronError, CronExpression
from .dburls import normalize_url
from .exceptions import ConfigurationError
from .routing import routes as broker_routes

ENV_PREFIX = "JOBTABLE_"

#: Longest value shown in an error message.
SHOWN_LIMIT = 120

#: Longest text of a setting (a URL, a path, a list item).
MAX_TEXT = 4096

#: Longest text of a list setting in the environment (JSON or commas).
MAX_LIST_TEXT = 1024 * 1024

#: Longest queue name (the queue columns are VARCHAR(255)).
MAX_QUEUE_NAME = 255

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``env``, ``configure``, ``pyproject``,
    ``flag`` (command line), ``argument`` (a constructor) or ``default``."""

    kind: str
    #: The name the user wrote: JOBTABLE_TIMEOUT, timeout, --max-processes...
    key: str
    #: The pyproject.toml file, for ``pyproject``.
    path: str = ""

    @property
    def origin(self) -> str:
        return {
            "env": "from the environment",
            "configure": "from jobtable.configure()",
            "pyproject": f"in [tool.jobtable] of {self.path}",
            "flag": "on the command line",
            "argument": "passed in code",
            "default": "the default",
        }.get(self.kind, self.kind)

    def label(self, shown: str) -> str:
        if self.kind == "env":
            return f"{self.key}={shown}"
        if self.kind == "flag":
            return f"{self.key} {shown}"
        if self.kind == "configure":
            return f"configure({self.key}={shown})"
        return f"{self.key} = {shown}"


def env_source(name: str) -> Source:
    return Source("env", ENV_PREFIX + name.upper())


@dataclass(frozen=True)
class Rule:
    """How one setting is read and checked."""

    #: int, flag (0/1), str, choice, names (list of strings), schedule, url, timezone.
    kind: str
    #: What the setting does, for the error message ("the seconds a job may run").
    meaning: str
    low: int | None = None
    high: int | None = None
    #: Unit of an int: "seconds", "milliseconds", "bytes" or "" (a count).
    unit: str = ""
    choices: tuple[str, ...] = ()
    #: Why the lower bound is what it is, said when a value is below it.
    why_low: str = ""
    #: More advice after the fix.
    hint: str = ""
    #: Extra check of a string (or of each string of a list): a problem or None.
    shape: Callable[[str], str | None] | None = None
    #: A list must have at least this many items.
    min_items: int = 0
    #: list[str] settings that also accept classes (middleware).
    classes_too: bool = False
    secret: bool = False

    def requirement(self) -> str:
        if self.kind in ("int", "number"):
            unit = f" of {self.unit}" if self.unit else ""
            what = "a number" if self.kind == "number" else "a whole number"
            return f"{what}{unit} from {self.low} to {self.high}"
        if self.kind == "flag":
            return "1 (on) or 0 (off)"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "names":
            more = " (at least one)" if self.min_items else ""
            return f"a list of non-empty names{more}: comma-separated or a JSON list in the environment"
        if self.kind == "schedule":
            return "a JSON list of [job, cron] pairs"
        if self.kind == "url":
            return (
                "a SQLAlchemy URL such as postgresql+psycopg://user:password@localhost/dbname "
                "or sqlite:///path/to/jobtable.sqlite3"
            )
        if self.kind == "direct_url":
            return "'' or a PostgreSQL URL such as postgresql+psycopg://user:password@db-host:5432/dbname"
        if self.kind == "timezone":
            return "an IANA time zone name"
        if self.kind == "routes":
            return "a JSON object of queue names to RabbitMQ URLs (amqp:// or amqps://)"
        return "a string"


# -- showing values ---------------------------------------------------------------------


def safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object whose repr() failed>"
    if len(text) > SHOWN_LIMIT:
        text = f"{text[:SHOWN_LIMIT]}... ({len(text)} characters)"
    return text


def safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also when it cannot be
    parsed, and a ``password=`` query parameter)."""
    text = re.sub(r"(?i)(password=)[^&]*", r"\1***", url)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if "@" in rest:
            creds, host = rest.rsplit("@", 1)
            if ":" in creds:
                creds = creds.split(":", 1)[0] + ":***"
            text = f"{scheme}://{creds}@{host}"
    return text


def show(value: Any, secret: bool = False) -> str:
    if secret and isinstance(value, str):
        return safe_repr(mask_url(value))
    if secret:
        return f"<{type(value).__name__}>"
    return safe_repr(value)


# -- the checks -----------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem with a value; ``check`` turns it into a ConfigurationError."""


def check(name: str, rule: Rule, value: Any, source: Source, default: Any) -> Any:
    """``value`` as the setting's type, or a ConfigurationError."""
    try:
        return _READERS[rule.kind](rule, value, source)
    except _Invalid as exc:
        raise invalid(name, rule, value, source, str(exc), default) from None


def invalid(name: str, rule: Rule, value: Any, source: Source, problem: str, default: Any) -> ConfigurationError:
    example = _example(rule, default, source)
    text = (
        f"Invalid setting {source.label(show(value, rule.secret))} ({source.origin}): {problem.rstrip('.')}. "
        f"{name} is {rule.meaning}. Fix: set {source.key} to {rule.requirement()}"
        + (f", e.g. {example}" if example else "")
        + "."
        + (f" {rule.hint}" if rule.hint else "")
    )
    return ConfigurationError(text)


def _example(rule: Rule, default: Any, source: Source) -> str:
    if rule.kind == "routes":
        return broker_routes.EXAMPLE if source.kind == "env" else repr(json.loads(broker_routes.EXAMPLE))
    if rule.kind in ("schedule", "url") or default in ("", [], None):
        if rule.kind == "schedule":
            pair = ["app.jobs.DailyReport", "0 9 * * *"]
            return json.dumps([pair]) if source.kind == "env" else repr([pair])
        return ""
    if isinstance(default, list):
        text = ",".join(default) if source.kind == "env" else json.dumps(default)
        return f"{text} (the default)"
    return f"{default} (the default)"


def _int(rule: Rule, value: Any, source: Source) -> int:
    number = _whole(value)
    return _in_range(rule, number)


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("it must be a whole number, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("it must be a finite whole number")
        if not value.is_integer():
            raise _Invalid("it must be a whole number, without a fraction")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise _Invalid("it is empty")
        # Digits only (an optional sign and underscores): no "1e3", no "0x10",
        # and never a number of thousands of digits.
        if len(text) > 30 or not re.fullmatch(r"[+-]?[0-9][0-9_]*", text) or "__" in text or text.endswith("_"):
            raise _Invalid("it is not a whole number")
        return int(text)
    raise _Invalid(f"it must be a whole number, not a {type(value).__name__}")


def _in_range(rule: Rule, number: int) -> int:
    if rule.low is not None and number < rule.low:
        raise _Invalid(f"it must be at least {rule.low}" + (f" ({rule.why_low})" if rule.why_low else ""))
    if rule.high is not None and number > rule.high:
        raise _Invalid(f"it must be at most {rule.high}")
    return number


def _number(rule: Rule, value: Any, source: Source) -> float:
    """A number that may have a fraction (command-line seconds, such as --stats-every)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _int(rule, value, source)
    if not math.isfinite(value):
        raise _Invalid("it must be a finite number")
    if rule.low is not None and value < rule.low:
        raise _Invalid(f"it must be at least {rule.low}" + (f" ({rule.why_low})" if rule.why_low else ""))
    if rule.high is not None and value > rule.high:
        raise _Invalid(f"it must be at most {rule.high}")
    return float(value)


def _flag(rule: Rule, value: Any, source: Source) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    raise _Invalid("it must be 1 or 0 (true/false, yes/no and on/off are accepted too)")


def _string(value: Any, what: str = "it") -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{what} must be a string, not a {type(value).__name__}")
    _text_problem(value, what)
    return value


def _text_problem(value: str, what: str) -> None:
    if len(value) > MAX_TEXT:
        raise _Invalid(f"{what} is {len(value)} characters long, at most {MAX_TEXT}")
    if "\x00" in value:
        raise _Invalid(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (e.g. from undecodable bytes): no database stores it.
        raise _Invalid(f"{what} contains a character that is not valid Unicode text (a lone surrogate)") from None


def _str(rule: Rule, value: Any, source: Source) -> str:
    text = _string(value).strip()
    if text and rule.shape is not None:
        problem = rule.shape(text)
        if problem:
            raise _Invalid(problem)
    return text


def _choice(rule: Rule, value: Any, source: Source) -> str:
    text = _string(value).strip().lower()
    if text not in rule.choices:
        raise _Invalid(f"it is not one of {', '.join(rule.choices)}")
    return text


def _parse_list(value: Any, source: Source, commas: bool) -> list[Any]:
    if isinstance(value, str):
        if len(value) > MAX_LIST_TEXT:
            raise _Invalid(f"it is {len(value)} characters long, at most {MAX_LIST_TEXT}")
        text = value.strip()
        if text.startswith("[") or not commas:
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _Invalid(f"it is not valid JSON ({type(exc).__name__}: {exc})") from None
        else:
            return [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"it must be a list, not a {type(value).__name__}")
    return list(value)


def _names(rule: Rule, value: Any, source: Source) -> list[Any]:
    items = _parse_list(value, source, commas=True)
    out: list[Any] = []
    for index, item in enumerate(items, 1):
        if rule.classes_too and isinstance(item, type):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise _Invalid(f"item {index} ({safe_repr(item)}) is not a string")
        text = item.strip()
        if not text:
            raise _Invalid(f"item {index} is an empty name")
        _text_problem(text, f"item {index}")
        problem = rule.shape(text) if rule.shape is not None else None
        if problem:
            raise _Invalid(f"item {index} ({safe_repr(text)}): {problem}")
        out.append(text)
    if len(out) < rule.min_items:
        raise _Invalid("the list is empty")
    return out


def _schedule(rule: Rule, value: Any, source: Source) -> list[Any]:
    items = _parse_list(value, source, commas=False)
    for index, item in enumerate(items, 1):
        what = f"entry {index} ({safe_repr(item)})"
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise _Invalid(f"{what} is not a [job, cron] pair")
        job, cron = item
        if isinstance(job, str):
            text = job.strip()
            if not text or text == "cmd:" or (text.startswith("cmd:") and not text[4:].strip()):
                raise _Invalid(f"{what}: the job is empty; give a dotted path or 'cmd:<shell command>'")
            _text_problem(text, f"{what}: the job")
        elif job is None or isinstance(job, (bool, int, float, list, tuple, dict)):
            raise _Invalid(f"{what}: the job must be a dotted path, 'cmd:...' or a Job instance")
        if isinstance(cron, str):
            _text_problem(cron, f"{what}: the cron expression")
            try:
                CronExpression.parse(cron)
            except CronError as exc:
                raise _Invalid(f"{what}: {exc}") from None
        elif cron is None or isinstance(cron, (bool, int, float, list, tuple, dict)):
            raise _Invalid(f"{what}: the schedule must be a cron string or a Schedule")
    return items


def _url(rule: Rule, value: Any, source: Source) -> str:
    text = _string(value).strip()
    if not text:
        raise _Invalid("it is empty")

    try:
        parsed = normalize_url(text)
    except ConfigurationError as exc:
        # Its message masks the user:password part; a password= query parameter too.
        raise _Invalid(re.sub(r"(?i)(password=)[^&'\s]*", r"\1***", str(exc)).rstrip(".")) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise _Invalid(f"the port {parsed.port} is not between 1 and 65535")
    return text


def _routes(rule: Rule, value: Any, source: Source) -> dict[str, str]:
    try:
        return broker_routes.parse(value)
    except ValueError as exc:  # its text masks every password (routing/routes.py)
        raise _Invalid(str(exc)) from None


def _direct_url(rule: Rule, value: Any, source: Source) -> str:
    """An optional PostgreSQL URL ('' for none)."""
    text = _string(value).strip()
    if not text:
        return ""
    text = _url(rule, text, source)
    if normalize_url(text).get_backend_name() != "postgresql":
        raise _Invalid("it is not a PostgreSQL URL (only PostgreSQL has LISTEN and session locks to keep off a pooler)")
    return text


def _timezone(rule: Rule, value: Any, source: Source) -> str:
    text = _string(value).strip()
    if text.upper() == "UTC":
        return text
    try:
        ZoneInfo(text)
    except Exception:
        raise _Invalid(
            "it is not a time zone of the IANA database (e.g. 'UTC', 'Europe/Berlin', 'America/New_York')"
        ) from None
    return text


_READERS: dict[str, Callable[[Rule, Any, Source], Any]] = {
    "int": _int,
    "number": _number,
    "flag": _flag,
    "str": _str,
    "choice": _choice,
    "names": _names,
    "schedule": _schedule,
    "url": _url,
    "direct_url": _direct_url,
    "timezone": _timezone,
    "routes": _routes,
}


# -- shapes of names --------------------------------------------------------------------------


def _identifiers(parts: list[str]) -> bool:
    return all(part.isidentifier() for part in parts)


def module_name(text: str) -> str | None:
    """A problem with a module name (``app``, ``app.jobs``), or None."""
    if not _identifiers(text.split(".")):
        return "it is not a module name (dotted Python identifiers, e.g. 'myproject.jobs')"
    return None


def object_path(text: str) -> str | None:
    """A problem with the dotted path of an object (``pkg.module.Name`` or ``pkg.module:Name``), or None."""
    module, colon, attr = text.partition(":")
    parts = module.split(".") + (attr.split(".") if colon else [])
    if not _identifiers(parts) or len(parts) < 2:
        return "it is not a dotted path of a class or function (e.g. 'myproject.middleware.Timing')"
    return None


def queue_name(text: str) -> str | None:
    if len(text) > MAX_QUEUE_NAME:
        return f"a queue name has at most {MAX_QUEUE_NAME} characters, this one {len(text)}"
    return None
