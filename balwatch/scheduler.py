"""Per-account pollers: interval with jitter, per-credential rate limit, backoff on failure.

Each account has one task that polls, hands the result on, then waits. A poll that
overruns its interval delays the next one; polls of one account never stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from balwatch.adapters.base import Adapter
from balwatch.backoff import Backoff
from balwatch.errors import AuthError, RateLimited, SourceError
from balwatch.poll import PollResult, poll_account
from balwatch.ratelimit import Limiter

log = structlog.get_logger(__name__)

OnResult = Callable[[PollResult], Awaitable[None]]

# Spread polls over this fraction of the interval so accounts do not poll in lock-step.
JITTER = 0.1


@dataclass
class PollPlan:
    """How one account is polled."""

    adapter: Adapter
    interval: float
    limiter: Limiter | None = None
    # Default: from the interval up to ten intervals (at most 15 min), so a source that comes
    # back is noticed within a few intervals, not after an hour.
    backoff: Backoff | None = None
    # An auth failure is retried slowly: repeated bad logins can lock the key.
    auth_backoff: Backoff = field(default_factory=lambda: Backoff(base=60.0, cap=3600.0))


def next_delay(
    plan: PollPlan, error: SourceError | None, failures: int, rand: Callable[[], float]
) -> float:
    """Seconds to wait after a poll: the interval (jittered) when it went well, longer when not.

    A failing source is polled less often, never more: the delay is at least the interval.
    """
    jittered = plan.interval * (1 + JITTER * (2 * rand() - 1))
    if error is None:
        return jittered
    if isinstance(error, AuthError):
        # Half the ceiling at least: full jitter alone could retry right away.
        ceiling = plan.auth_backoff.ceiling(failures)
        return max(jittered, ceiling / 2 + plan.auth_backoff.delay(failures) / 2)
    backoff = plan.backoff or Backoff(base=plan.interval, cap=min(10 * plan.interval, 900.0))
    delay = max(jittered, backoff.delay(failures))
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay


async def run_poller(
    plan: PollPlan,
    on_result: OnResult,
    stop: asyncio.Event,
    *,
    rand: Callable[[], float] = random.random,
) -> None:
    """Poll until ``stop`` is set. ``on_result`` failures are logged, never fatal."""
    failures = 0
    # A random first offset within the jitter spreads the first round too.
    delay = plan.interval * JITTER * rand()
    while not await _wait(stop, delay):
        if plan.limiter is not None:
            await plan.limiter.acquire()
        result = await poll_account(plan.adapter)
        failures = 0 if result.ok else failures + 1
        try:
            await on_result(result)
        except Exception:
            log.exception("poll_result_handler_failed", account=result.account)
        delay = next_delay(plan, result.error, failures, rand)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``stop`` is set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Scheduler:
    """Runs one poller task per plan; ``async with`` stops them all on exit."""

    def __init__(self, on_result: OnResult, *, rand: Callable[[], float] = random.random) -> None:
        self._on_result = on_result
        self._rand = rand
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, plans: Iterable[PollPlan]) -> None:
        for plan in plans:
            name = plan.adapter.account.name
            self._tasks[name] = asyncio.create_task(
                run_poller(plan, self._on_result, self._stop, rand=self._rand),
                name=f"poller:{name}",
            )

    async def stop(self) -> None:
        """Stop every poller; a poll in flight is cancelled (its result would be stale)."""
        self._stop.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Scheduler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
