"""Per-account pollers: interval with jitter, per-credential rate limit, backoff on failure.

Each account has one task that polls, hands the result on, then waits. A poll that
overruns its interval delays the next one; polls of one account never stack. A reload
restarts only the pollers whose plan changed: the others keep their timing and backoff,
so a reload neither bursts every account at once nor retries a locked-out key early.
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
# The first round is spread over at most this long: the daemon is READY once every account
# has been polled, and systemd gives a start 90 s by default, whatever the interval.
FIRST_SPREAD_MAX = 5.0
# A source's Retry-After is honoured up to this long. More is a broken header or clock, and
# polling must not stop for days; a rate-limited account shows in `age` and `failures`.
MAX_RETRY_AFTER = 3600.0


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
    # Asked right before each poll (a replica: whether its lease on the account is still
    # surely valid); False skips the poll. Not part of the timing: same_as ignores it.
    may_poll: Callable[[], bool] | None = None

    def same_as(self, other: PollPlan) -> bool:
        """Polls the same way: same adapter and limiter objects, same timing."""
        return (
            self.adapter is other.adapter
            and self.limiter is other.limiter
            and (self.interval, self.backoff, self.auth_backoff)
            == (other.interval, other.backoff, other.auth_backoff)
        )


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
    cap = max(plan.interval, min(10 * plan.interval, 900.0))  # an hourly poll backs off hourly
    backoff = plan.backoff or Backoff(base=plan.interval, cap=cap)
    delay = max(jittered, backoff.delay(failures))
    retry_after = source_retry_after(error)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def first_delay(plan: PollPlan, rand: Callable[[], float]) -> float:
    """Seconds before an account's first poll: a random offset within the jitter spreads the
    first round too, but never past :data:`FIRST_SPREAD_MAX`, whatever the interval."""
    return min(plan.interval * JITTER, FIRST_SPREAD_MAX) * rand()


def source_retry_after(error: SourceError | None) -> float | None:
    """How long the source asked us to wait, bounded by :data:`MAX_RETRY_AFTER`."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return min(error.retry_after, MAX_RETRY_AFTER)
    return None


async def run_poller(
    plan: PollPlan,
    on_result: OnResult,
    stop: asyncio.Event,
    *,
    rand: Callable[[], float] = random.random,
) -> None:
    """Poll until ``stop`` is set. ``on_result`` failures are logged, never fatal."""
    failures = 0
    delay = first_delay(plan, rand)
    while not await _wait(stop, delay):
        if plan.limiter is not None:
            await plan.limiter.acquire()
        if plan.may_poll is not None and not plan.may_poll():
            # A replica woken past its lease (a pause, a stalled loop): the key may be
            # another's now, so no request on it; the membership loop stops this poller.
            delay = plan.interval
            continue
        result = await poll_account(plan.adapter)
        failures = 0 if result.ok else failures + 1
        retry_after = source_retry_after(result.error)
        if retry_after is not None and plan.limiter is not None:
            # The source counts per key: every account on it waits, not only this one.
            plan.limiter.hold_off(retry_after)
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
    """Runs one poller task per account; ``async with`` stops them all on exit."""

    def __init__(self, on_result: OnResult, *, rand: Callable[[], float] = random.random) -> None:
        self._on_result = on_result
        self._rand = rand
        self._stop = asyncio.Event()
        self._running: dict[str, tuple[PollPlan, asyncio.Task[None]]] = {}

    async def apply(self, plans: Iterable[PollPlan]) -> None:
        """Poll exactly ``plans``: an account whose plan is unchanged keeps its poller; the
        pollers of changed and removed accounts stop (a poll in flight is cancelled)."""
        wanted = {plan.adapter.account.name: plan for plan in plans}
        stale = [
            name
            for name, (plan, _) in self._running.items()
            if name not in wanted or not wanted[name].same_as(plan)
        ]
        await self._cancel([self._running.pop(name)[1] for name in stale])
        for name, plan in wanted.items():
            if name not in self._running:
                task = asyncio.create_task(
                    run_poller(plan, self._on_result, self._stop, rand=self._rand),
                    name=f"poller:{name}",
                )
                self._running[name] = (plan, task)

    async def stop(self) -> None:
        """Stop every poller; a poll in flight is cancelled (its result would be stale)."""
        self._stop.set()
        await self._cancel([task for _, task in self._running.values()])
        self._running.clear()
        self._stop = asyncio.Event()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Scheduler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
