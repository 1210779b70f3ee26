"""The limiter paces starts so no window ever holds more than the limit, even under contention."""

from __future__ import annotations

import asyncio
import itertools

from balwatch.adapters.base import RateLimit
from balwatch.ratelimit import Limiter, LimiterRegistry, with_headroom
from tests.waiting import within


class FakeTime:
    """A clock that advances only when someone sleeps on it: tests run instantly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def max_in_window(starts: list[float], per: float) -> int:
    best, first = 0, 0
    for last, t in enumerate(starts):
        while t - starts[first] >= per:
            first += 1
        best = max(best, last - first + 1)
    return best


async def test_concurrent_callers_never_exceed_the_limit() -> None:
    t = FakeTime()
    limiter = Limiter(RateLimit(4, 2.0), clock=t.clock, sleep=t.sleep)
    starts: list[float] = []

    async def caller() -> None:
        for _ in range(10):
            await limiter.acquire()
            starts.append(t.clock())

    await within(asyncio.gather(*(caller() for _ in range(4))), "40 acquisitions")
    assert len(starts) == 40
    assert max_in_window(starts, 2.0) == 4
    # evenly paced, and no slower than it must be: one start every 0.5 s
    assert [b - a for a, b in itertools.pairwise(starts)] == [0.5] * 39


def test_headroom_scales_down_but_keeps_one() -> None:
    assert with_headroom(RateLimit(300, 60.0)) == RateLimit(240, 60.0)
    assert with_headroom(RateLimit(5, 2.0)) == RateLimit(4, 2.0)
    assert with_headroom(RateLimit(1, 1.0)) == RateLimit(1, 1.0)


def test_registry_shares_one_limiter_per_credential() -> None:
    registry = LimiterRegistry()
    a = registry.get("key-fp-1", RateLimit(5, 2.0))
    assert registry.get("key-fp-1", RateLimit(5, 2.0)) is a
    assert registry.get("key-fp-2", RateLimit(5, 2.0)) is not a
    assert registry.get("key-fp-1", RateLimit(4, 2.0)) is not a  # a changed limit applies


async def test_hold_off_delays_every_caller() -> None:
    t = FakeTime()
    limiter = Limiter(RateLimit(2, 1.0), clock=t.clock, sleep=t.sleep)
    await limiter.acquire()
    limiter.hold_off(30.0)  # the source said Retry-After: 30
    await limiter.acquire()
    assert t.clock() == 1030.0
    limiter.hold_off(0.0)  # a shorter hold-off never shortens the pacing
    await limiter.acquire()
    assert t.clock() == 1030.5
