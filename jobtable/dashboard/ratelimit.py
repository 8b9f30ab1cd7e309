"""Slow down password guessing: a sliding window of failed logins per client.

After ``limit`` failures within ``window`` seconds a client is refused (429)
until its oldest failure leaves the window; nothing is permanent, so the
local user who mistyped recovers within a minute.  Memory is bounded: at
most ``max_clients`` addresses with at most ``limit`` timestamps each.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import deque
from collections.abc import Callable


def client_key(address: str) -> str:
    """IPv6 clients by their /64 (one machine usually owns a whole /64 and
    could otherwise rotate addresses); anything else as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip)


class FailureLimiter:
    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ValueError("FailureLimiter: limit, window and max_clients must be positive.")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        #: Replaceable (tests step time instead of sleeping).
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        # Sync authorize hooks may run in threads under WSGI adapters.
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: now)."""
        key = client_key(address)
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, address: str) -> None:
        key = client_key(address)
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if times is None:
                if len(self._failures) >= self.max_clients:
                    self._make_room(now)
                times = self._failures[key] = deque(maxlen=self.limit)
            times.append(now)

    def _make_room(self, now: float) -> None:
        # Forget the client whose record is oldest (dicts keep insertion
        # order; a record emptied by expiry is deleted, so its next failure
        # goes to the end).  O(1), and forgetting only lets someone try sooner.
        while len(self._failures) >= self.max_clients:
            del self._failures[next(iter(self._failures))]

    def __len__(self) -> int:
        return len(self._failures)
