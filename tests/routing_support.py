"""Helpers of the routing tests (issue 18): the machine's RabbitMQ, one
uniquely named queue per test, deleted afterwards."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def new_queue(prefix: str = "jt_route") -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


def routes_env(env: dict[str, str], *queues: str, url: str = AMQP_URL) -> dict[str, str]:
    out = dict(env)
    out["JOBTABLE_BROKER_ROUTES"] = json.dumps({queue: url for queue in queues})
    return out


def delete_queues(*queues: str, url: str = AMQP_URL) -> None:
    with Connection(url) as conn:
        channel = conn.channel()
        for queue in queues:
            try:
                channel.queue_delete(queue)
            except Exception:  # gone already (a channel error closes the channel)
                channel = conn.channel()


def depth(queue: str, url: str = AMQP_URL) -> int:
    """Ready messages of ``queue`` (0 when it does not exist yet)."""
    with Connection(url) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception:
            return 0


@contextmanager
def raw_producer(url: str = AMQP_URL) -> Iterator[Any]:
    """A plain Kombu producer (publishes what a hostile or foreign client might)."""
    with Connection(url) as conn:
        yield conn.Producer()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRabbit:
    """A rabbitmq-server node of the test's own (own name, ports, data and
    log directories, no plugins), so that a test can stop and restart a
    broker without touching the machine's shared one."""

    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self, base: Any) -> None:
        import pathlib

        self.base = pathlib.Path(base)
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"jt{secrets.token_hex(4)}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: Any = None
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        (self.base / "env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.base / "enabled_plugins").write_text("[].\n")

    def env(self) -> dict[str, str]:
        import os

        out = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        out.update(
            HOME=str(self.base / "home"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return out

    def start(self, timeout: float = 90) -> None:
        import subprocess

        from tests.polling import wait_for

        log = (self.base / "server.out").open("a")
        self.proc = subprocess.Popen([self.SERVER], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("rabbitmq-server exited:\n" + (self.base / "server.out").read_text()[-3000:])
            try:
                with Connection(self.url, connect_timeout=1) as conn:
                    conn.connect()
                return True
            except Exception:
                return False

        wait_for(up, timeout=timeout, interval=0.2, what="the private RabbitMQ node")

    def stop(self, kill: bool = False) -> None:
        import os
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        # Its own session: the node's Erlang VM and its helpers, nothing else.
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
