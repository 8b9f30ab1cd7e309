"""``broker_transport_options`` the jobtable transport understands.

They configure the transport only: nothing here reaches ``create_engine``
(the engine comes from ``jobtable.db.engine``, one per process and URL),
except ``connect_timeout``, which ``connect_of`` turns into a libpq
connection parameter, with Kombu's ``connect_timeout`` (Celery's
``broker_connection_timeout``) and ``ssl`` (``broker_use_ssl``).
Options other transports use (``max_retries``, ``visibility_timeout``...)
are ignored, so one Celery config can switch brokers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy.engine import URL

from ..db import connect_options
from ..exceptions import ConfigurationError

#: How errors name where a broker connection's options came from.
TIMEOUT_OPTION = "broker_transport_options['connect_timeout']"
TIMEOUT_ARGUMENT = "broker_connection_timeout (Kombu: Connection(connect_timeout=...))"
SSL_SETTING = "broker_use_ssl (Kombu: Connection(ssl=...))"


@dataclass(frozen=True)
class TransportOptions:
    #: Longest wait (seconds) between two looks at the table when nothing
    #: wakes the consumer earlier (a NOTIFY on PostgreSQL, a publish in the
    #: same process).
    polling_interval: float = 1.0
    #: Polling interval used instead when wake-ups are unavailable (SQLite,
    #: or ``wakeups=False``): short, because polling is then all there is.
    fallback_polling_interval: float = 0.1
    #: Use PostgreSQL LISTEN/NOTIFY to wake idle consumers.
    wakeups: bool = True
    #: Seconds a claimed, unacked message stays with its consumer without a
    #: renewal; a consumer that dies (kill -9) loses its messages to others
    #: after this long.  Live consumers renew every ``lease_seconds / 3``.
    lease_seconds: float = 60.0
    #: How often consumers look for lapsed leases (default: lease_seconds / 2).
    recover_interval: float = 0.0
    #: Most messages claimed per query (further capped by the QoS prefetch).
    batch_size: int = 100
    #: How often a consumer turns due ETA/countdown messages into ready ones.
    eta_interval: float = 0.5
    #: Seconds an exchange's bindings are cached by a publisher.
    binding_cache_seconds: float = 1.0
    #: Commit claims and acks without waiting for the WAL flush (PostgreSQL).
    #: A server crash can then only cause redeliveries, never lost messages.
    async_commit: bool = True
    #: How often waiting messages past their expiry are swept away.
    expired_sweep_interval: float = 60.0
    #: Let Celery run its event loop on this transport (PostgreSQL with
    #: wake-ups only): the prefork pool then needs no helper threads.
    event_loop: bool = True
    #: Seconds to wait for the database server to answer a new connection
    #: (0: Kombu's connect_timeout, i.e. Celery's broker_connection_timeout).
    connect_timeout: float = 0.0
    #: Seconds a consumer rides out an unreachable database before Kombu is
    #: told (and reconnects, dropping the channel's deliveries): see
    #: ``outage.py``.  Capped at a third of ``lease_seconds``; 0 reports at once.
    outage_grace: float = 10.0

    @classmethod
    def from_mapping(cls, options: dict[str, Any] | None) -> TransportOptions:
        values: dict[str, Any] = {}
        for field in fields(cls):
            if not options or field.name not in options or options[field.name] is None:
                continue
            raw = options[field.name]
            values[field.name] = _coerce(field.name, field.type, raw)
        parsed = cls(**values)
        if parsed.lease_seconds <= 0 or parsed.batch_size < 1 or parsed.polling_interval < 0:
            raise ConfigurationError(
                "broker_transport_options: lease_seconds must be > 0, batch_size >= 1, polling_interval >= 0."
            )
        if parsed.connect_timeout < 0 or parsed.connect_timeout > 3600:
            raise ConfigurationError(
                f"{TIMEOUT_OPTION} must be from 0 (use broker_connection_timeout) to 3600 seconds, "
                f"not {parsed.connect_timeout:g}."
            )
        if not 0 <= parsed.outage_grace <= 3600:  # NaN fails too
            raise ConfigurationError(
                "broker_transport_options['outage_grace'] must be from 0 (report an outage to Kombu at once) "
                f"to 3600 seconds, not {parsed.outage_grace!r}."
            )
        return parsed

    @property
    def outage_grace_seconds(self) -> float:
        """The grace in effect: never more than a third of the lease."""
        return min(self.outage_grace, self.lease_seconds / 3)

    @property
    def renew_interval(self) -> float:
        return self.lease_seconds / 3

    @property
    def recover_every(self) -> float:
        return self.recover_interval or self.lease_seconds / 2


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if kind == "int":
            return int(raw)
        return float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"broker_transport_options[{name!r}] must be a {kind}, got {raw!r}."
        ) from None


def connect_of(url: URL, client: Any, options: TransportOptions) -> connect_options.Connect:
    """The libpq parameters of the broker's engine: the connect timeout and
    the SSL options of the Kombu connection ``client`` (see
    ``db/connect_options.py``).  The URL's own ``connect_timeout`` wins,
    then ``broker_transport_options['connect_timeout']``, then
    ``broker_connection_timeout`` (Celery's default is 4 s, Kombu's 5 s)."""
    ssl_params = connect_options.ssl_parameters(getattr(client, "ssl", None), SSL_SETTING)
    connect_options.check_against_url(url, ssl_params, SSL_SETTING)
    params = dict(ssl_params)
    source = ""
    if connect_options.url_timeout(url) is not None:
        source = "connect_timeout in the broker URL's query"
    elif url.get_backend_name() in connect_options.TIMEOUT_BACKENDS:  # not SQLite: a file, nothing to wait for
        timeout, source = options.connect_timeout, TIMEOUT_OPTION
        if not timeout:
            raw = getattr(client, "connect_timeout", None)
            try:
                timeout = float(raw) if raw is not None else 0.0
            except (TypeError, ValueError):
                raise ConfigurationError(f"{TIMEOUT_ARGUMENT} must be a number of seconds, not {raw!r}.") from None
            source = TIMEOUT_ARGUMENT
        if timeout > 0:
            params["connect_timeout"] = connect_options.timeout_parameter(timeout)
        else:
            source = ""  # the engine applies JOBTABLE_CONNECT_TIMEOUT
    return connect_options.Connect(tuple(sorted(params.items())), "broker_url", source)
