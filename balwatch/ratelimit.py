"""Per-credential request limiter: never exceed a source's documented limit.

Requests are paced evenly, one every ``per_seconds / requests``, rather than allowed in
bursts up to the window's count: the source counts arrivals, and network latency varies,
so a burst at the end of one window and one at the start of the next can land inside a
single window of the server's. Paced starts keep that slack. Accounts that share a
credential share a limiter, because the source counts per key, not per account of ours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from balwatch.adapters.base import RateLimit

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Fraction of a documented limit we allow ourselves: other clients may share the key,
# and a lock-out (Bitso: a minute, repeated: a day) costs far more than a slower poll.
DEFAULT_HEADROOM = 0.8


class Limiter:
    """``await limiter.acquire()`` returns once a request may start."""

    def __init__(
        self, limit: RateLimit, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if limit.requests < 1 or limit.per_seconds <= 0:
            raise ValueError(f"a rate limit needs requests >= 1 and a period > 0, got {limit}")
        self.limit = limit
        self._spacing = limit.per_seconds / limit.requests
        self._clock = clock
        self._sleep = sleep
        self._next_start = float("-inf")
        self._lock = asyncio.Lock()  # FIFO: waiters are served in arrival order

    def hold_off(self, seconds: float) -> None:
        """No request starts for ``seconds`` (the source said Retry-After, or locked us out)."""
        self._next_start = max(self._next_start, self._clock() + seconds)

    async def acquire(self) -> None:
        async with self._lock:
            now = self._clock()
            if now < self._next_start:
                await self._sleep(self._next_start - now)
                now = max(self._clock(), self._next_start)
            self._next_start = now + self._spacing


def with_headroom(limit: RateLimit, headroom: float = DEFAULT_HEADROOM) -> RateLimit:
    """The documented limit scaled down, never below one request per period."""
    return RateLimit(max(1, int(limit.requests * headroom)), limit.per_seconds)


class LimiterRegistry:
    """One limiter per credential key (a Secret fingerprint, or the account when keyless)."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._limiters: dict[str, Limiter] = {}

    def get(self, key: str, limit: RateLimit) -> Limiter:
        limiter = self._limiters.get(key)
        if limiter is None or limiter.limit != limit:
            limiter = Limiter(limit, clock=self._clock, sleep=self._sleep)
            self._limiters[key] = limiter
        return limiter
