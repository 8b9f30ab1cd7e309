"""The ``broker_routes`` setting: queue name -> Kombu broker URL.

Below ``setting_rules`` (which calls ``parse``): imports nothing of jobtable
but ``dburls``, whose strict check and redaction are the project's one way
of reading a URL without echoing its password.  Kombu is not imported here,
so reading the settings of a user who does not route costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..dburls import check_text, redact
from ..exceptions import ConfigurationError

#: Kombu transports a queue may be routed to: RabbitMQ through py-amqp
#: (``amqp``/``pyamqp``, TLS with ``amqps``).  Other Kombu transports lack
#: publisher confirms or redelivery of a killed consumer's messages, which
#: routing relies on.
SCHEMES = ("amqp", "amqps", "pyamqp")
#: Longest text of the setting in the environment.
MAX_TEXT = 64 * 1024
MAX_QUEUE_NAME = 255
EXAMPLE = '{"thumbnails": "amqp://guest:guest@127.0.0.1:5672//"}'


def parse(value: Any) -> dict[str, str]:
    """``value`` (a mapping, or its JSON text) as {queue: broker URL}.

    Raises ValueError with a message that names the problem and never
    contains a password (URLs are shown through ``dburls.redact``)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if len(text) > MAX_TEXT:
            raise ValueError(f"it is {len(text)} characters long, at most {MAX_TEXT}")
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            # JSONDecodeError's text names a position, never the document.
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ValueError(f"it is not a JSON object{where} (expected e.g. {EXAMPLE})") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"it must be an object of queue names to broker URLs, not a {type(value).__name__}")
    out: dict[str, str] = {}
    for queue, url in value.items():
        if not isinstance(queue, str) or not queue.strip():
            raise ValueError("a queue name is empty or not a string")
        _check_text(queue, "a queue name")
        if len(queue) > MAX_QUEUE_NAME:
            raise ValueError(f"the queue name {queue[:40]!r}... has {len(queue)} characters, at most {MAX_QUEUE_NAME}")
        if not isinstance(url, str):
            raise ValueError(f"the broker URL of queue {queue!r} must be a string, not a {type(url).__name__}")
        out[queue.strip()] = check_url(url.strip(), queue)
    return out


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a character that is not valid Unicode text (a lone surrogate)") from None


def check_url(url: str, queue: str) -> str:
    """``url`` if it is a broker URL routing can use; ValueError (password masked) if not."""
    what = f"the broker URL of queue {queue!r}"
    if not url:
        raise ValueError(f"{what} is empty")
    _check_text(url, what)
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"{what} ({redact(url)!r}) is not a URL (expected e.g. amqp://user:password@host:5672//)")
    if scheme.lower() not in SCHEMES:
        raise ValueError(
            f"{what} ({redact(url)!r}) has scheme {scheme[:40]!r}: routing supports {', '.join(SCHEMES)} (RabbitMQ)"
        )
    try:
        check_text(url, what[0].upper() + what[1:])
    except ConfigurationError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError:
        # The text is not shown: a port that is not a number may be a password's end.
        raise ValueError(f"{what} ({redact(url)!r}) has a port that is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{what} ({redact(url)!r}) names no host")
    if port == 0:
        raise ValueError(f"{what} ({redact(url)!r}) has port 0: use a port from 1 to 65535")
    return url


def display(url: str) -> str:
    """``url`` for logs and screens: the password masked."""
    return redact(url)


def for_worker(queues: list[str], routes: Mapping[str, str]) -> str | None:
    """The broker URL a worker consuming ``queues`` uses (None: the table).

    ConfigurationError when it mixes routed and table queues or brokers: a
    member waits on one source, so run one worker per kind."""
    routed = [queue for queue in queues if queue in routes]
    if not routed:
        return None
    table = [queue for queue in queues if queue not in routes]
    if table:
        raise ConfigurationError(
            f"The worker's queues mix routed ones ({', '.join(routed)}: broker_routes) and table ones "
            f"({', '.join(table)}). Run one worker for each kind, e.g. `jobtable worker -q {','.join(routed)}` "
            f"and `jobtable worker -q {','.join(table)}`."
        )
    urls = {routes[queue] for queue in routed}
    if len(urls) > 1:
        raise ConfigurationError(
            f"The worker's queues {', '.join(routed)} are routed to {len(urls)} different brokers "
            f"({', '.join(sorted(redact(url) for url in urls))}). Run one worker per broker."
        )
    return routes[routed[0]]
