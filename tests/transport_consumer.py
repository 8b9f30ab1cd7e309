"""A consumer process for the crash tests: takes messages without acking,
reports their payloads on stdout, then waits to be killed."""

from __future__ import annotations

import sys
import time

from kombu import Consumer, Exchange, Queue

from tests.transport_helpers import connect


def main() -> None:
    db_url, queue_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = connect(db_url)
    held = []
    queue = Queue(queue_name, Exchange(queue_name), queue_name)
    with Consumer(conn, [queue], callbacks=[lambda body, message: held.append(message)]):
        while len(held) < count:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        print("HELD", len(held), flush=True)
        while True:  # hold them, leases renewed, until kill -9
            time.sleep(1)


if __name__ == "__main__":
    main()
