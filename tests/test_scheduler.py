"""Pollers against the real simulator: limits kept, failures back off, polls never stack."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from balwatch.adapters.base import RateLimit
from balwatch.backoff import Backoff
from balwatch.errors import AuthError, RateLimited, SourceUnavailable
from balwatch.poll import PollResult, make_adapter
from balwatch.ratelimit import Limiter
from balwatch.scheduler import (
    JITTER,
    MAX_RETRY_AFTER,
    PollPlan,
    Scheduler,
    first_delay,
    next_delay,
)
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.conftest import StartSim, account_spec
from tests.waiting import within


def coinw(name: str, key: str = "ck") -> SimAccount:
    return SimAccount(
        name,
        "coinw",
        api_key=key,
        api_secret="cs",
        balances={"coinw": {"USDT": {"available": "10", "locked": "0"}}},
    )


def key_sharing_plans(
    url: str, http: aiohttp.ClientSession, limiter: Limiter, *, interval: float
) -> list[PollPlan]:
    """Three CoinW accounts on one key (the simulator's account "a"), one shared limiter."""
    return [
        PollPlan(
            make_adapter(
                "coinw",
                account_spec("coinw", url, {"api_key": "ck", "api_secret": "cs"}, name=n),
                http,
            ),
            interval,
            limiter,
        )
        for n in ("a1", "a2", "a3")
    ]


async def collect(queue: asyncio.Queue[PollResult], n: int) -> list[PollResult]:
    return [await within(queue.get(), f"poll result {i + 1} of {n}", 20) for i in range(n)]


async def test_accounts_sharing_a_key_never_exceed_its_limit(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # The fake enforces 5 per 0.5 s per key; three accounts on one key poll as fast as allowed.
    sim = await start_sim(coinw("a"), rate_limits={"coinw": (5, 0.5)})
    results: asyncio.Queue[PollResult] = asyncio.Queue()
    plans = key_sharing_plans(sim.url, http, Limiter(RateLimit(4, 0.5)), interval=0.001)
    async with Scheduler(results.put) as scheduler:
        await scheduler.apply(plans)
        got = await collect(results, 24)
    assert all(r.ok for r in got), [str(r.error) for r in got if r.error]
    assert sim.state.accounts["a"].max_requests_in(0.5) <= 4


async def test_a_poll_that_overruns_its_interval_is_not_stacked(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw("slow"))
    sim.state.accounts["slow"].delay = 0.2  # each answer takes 20x the interval
    results: asyncio.Queue[PollResult] = asyncio.Queue()
    spec = account_spec("coinw", sim.url, {"api_key": "ck", "api_secret": "cs"}, name="slow")
    async with Scheduler(results.put) as scheduler:
        await scheduler.apply([PollPlan(make_adapter("coinw", spec, http), 0.01)])
        await collect(results, 3)
        # one request in flight at most: three answers, at most one more request started
        assert sim.state.accounts["slow"].requests <= 4


async def test_a_closed_gate_skips_polls_until_it_opens_and_the_plan_stays_the_same(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw("gated"))
    results: asyncio.Queue[PollResult] = asyncio.Queue()
    spec = account_spec("coinw", sim.url, {"api_key": "ck", "api_secret": "cs"}, name="gated")
    asked = asyncio.Event()
    open_ = False

    def gate() -> bool:
        asked.set()
        return open_

    adapter = make_adapter("coinw", spec, http)
    plan = PollPlan(adapter, 0.01, may_poll=gate)
    assert plan.same_as(PollPlan(adapter, 0.01, may_poll=lambda: True))  # not timing
    async with Scheduler(results.put) as scheduler:
        await scheduler.apply([plan])
        for _ in range(3):  # asked again and again, never polled
            asked.clear()
            await within(asked.wait(), "the gate to be asked")
        assert sim.state.accounts["gated"].requests == 0 and results.empty()
        open_ = True
        await collect(results, 2)


async def test_failures_back_off_and_recover(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw("flaky"))
    sim.state.accounts["flaky"].faults.append(Fault(FaultKind.STATUS, times=2, status=503))
    results: asyncio.Queue[PollResult] = asyncio.Queue()
    spec = account_spec("coinw", sim.url, {"api_key": "ck", "api_secret": "cs"}, name="flaky")
    plan = PollPlan(make_adapter("coinw", spec, http), 0.01, backoff=Backoff(base=0.01, cap=0.05))
    async with Scheduler(results.put) as scheduler:
        await scheduler.apply([plan])
        got = await collect(results, 3)
    assert [type(r.error) for r in got] == [SourceUnavailable, SourceUnavailable, type(None)]
    assert got[2].rows is not None and got[2].rows[0].available is not None


def test_delay_rules() -> None:
    top, mid = (lambda: 0.999999), (lambda: 0.5)
    plan = PollPlan(
        adapter=None,  # type: ignore[arg-type]
        interval=30.0,
        backoff=Backoff(base=5.0, cap=900.0, rand=top),
        auth_backoff=Backoff(base=60.0, cap=3600.0, rand=top),
    )
    assert next_delay(plan, None, 0, mid) == 30.0
    assert 30 * (1 - JITTER) <= next_delay(plan, None, 0, lambda: 0.0) < 30
    # failures: never sooner than the interval, growing with the count up to the cap
    unavailable = SourceUnavailable("coinw", "HTTP 503")
    assert next_delay(plan, unavailable, 1, mid) == 30.0  # 5 s backoff < the interval
    assert next_delay(plan, unavailable, 12, top) > 800
    # a rate limit's retry-after is honoured even when longer than the backoff
    assert next_delay(plan, RateLimited("bitso", "420", retry_after=120.0), 1, mid) == 120.0
    # auth errors back off hard: up to an hour, never fast
    assert next_delay(plan, AuthError("bitso", "0201"), 8, top) > 3000
    # a Retry-After of days is a broken header or clock: polling resumes within the hour
    days = RateLimited("bitso", "420", retry_after=864_000.0)
    assert next_delay(plan, days, 1, mid) == MAX_RETRY_AFTER


def test_an_interval_past_the_backoff_cap_still_backs_off() -> None:
    """poll_interval 30m: the default backoff starts above its usual 15-minute cap, which
    once raised out of the poller and stopped the account's polling for good."""
    hourly = PollPlan(adapter=None, interval=3600.0)  # type: ignore[arg-type]
    for failures in (1, 5, 50):
        delay = next_delay(hourly, SourceUnavailable("coinw", "HTTP 503"), failures, lambda: 0.5)
        assert 3600 <= delay <= 3600 * (1 + JITTER)


async def test_a_retry_after_holds_off_every_account_on_the_key(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    """The source counts per key: after one account is told to wait, none of the accounts
    sharing the key asks again before the time is up."""
    sim = await start_sim(coinw("a"), rate_limits={"coinw": (10**6, 1.0)})  # only our fault
    throttle = {"code": "29001", "msg": "API access frequently"}
    sim.state.accounts["a"].faults.append(
        Fault(FaultKind.RAW, status=200, body=json.dumps(throttle), retry_after="0.6")
    )
    told_to_wait: list[float] = []

    async def on_result(result: PollResult) -> None:
        if isinstance(result.error, RateLimited):
            told_to_wait.append(sim.state.clock())
        await results.put(result)

    results: asyncio.Queue[PollResult] = asyncio.Queue()
    plans = key_sharing_plans(sim.url, http, Limiter(RateLimit(1000, 1.0)), interval=0.01)
    async with Scheduler(on_result) as scheduler:
        await scheduler.apply(plans)
        got = await collect(results, 12)
    assert sum(isinstance(r.error, RateLimited) for r in got) == 1
    [answered] = told_to_wait
    quiet = [
        t for t in sim.state.accounts["a"].request_times if answered + 0.05 < t < answered + 0.55
    ]
    assert quiet == []


async def test_apply_restarts_only_the_pollers_whose_plan_changed(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    """A reload must not retry a key that is backing off after an auth failure, nor keep
    polling a removed account; a new or changed plan starts at once."""
    sim = await start_sim(coinw("locked", key="lk"), coinw("ok"), coinw("new", key="nk"))
    results: asyncio.Queue[PollResult] = asyncio.Queue()

    def plan(name: str, key: str, secret: str) -> PollPlan:
        creds = {"api_key": key, "api_secret": secret}
        return PollPlan(
            make_adapter("coinw", account_spec("coinw", sim.url, creds, name=name), http), 0.01
        )

    locked, ok = plan("locked", "lk", "wrong"), plan("ok", "ck", "cs")
    async with Scheduler(results.put) as scheduler:
        await scheduler.apply([locked, ok])
        got = await collect(results, 4)
        failed = [r for r in got if r.account == "locked"]
        assert [type(r.error) for r in failed] == [AuthError], "one try, then a long backoff"

        await scheduler.apply([locked, ok, plan("new", "nk", "cs")])
        while not results.empty():
            results.get_nowait()
        await scheduler.apply(
            [locked, plan("new", "nk", "cs")]
        )  # ok removed, new changed: restarted
        while not results.empty():
            results.get_nowait()
        later = await collect(results, 4)
        assert sim.state.accounts["locked"].requests == 1, "a reload retried a locked-out key"
        assert {r.account for r in later} == {"new"}, "the removed account kept polling"

        # The same adapter at another interval is a changed plan: polled again at once.
        await scheduler.apply([PollPlan(locked.adapter, 0.02)])
        [again] = await collect(results, 1)
        assert again.account == "locked" and isinstance(again.error, AuthError)


def test_the_first_round_is_spread_over_five_seconds_at_most() -> None:
    """The daemon is READY after every first poll, and systemd allows a start 90 s: an
    hourly account's first poll cannot wait out a tenth of its interval."""
    latest, earliest = (lambda: 0.999999), (lambda: 0.0)
    hourly = PollPlan(adapter=None, interval=3600.0)  # type: ignore[arg-type]
    assert 4.99 < first_delay(hourly, latest) <= 5.0
    assert first_delay(hourly, earliest) == 0.0
    # A short interval spreads its first polls over its own jitter, as later ones.
    every_10s = PollPlan(adapter=None, interval=10.0)  # type: ignore[arg-type]
    assert 0.99 < first_delay(every_10s, latest) <= 10.0 * JITTER


async def test_the_poller_waits_the_capped_first_delay(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # rand 0.01: capped, the first poll comes after 0.05 s; spread over a tenth of the hour
    # it would come after 3.6 s, past this test's wait.
    sim = await start_sim(coinw("hourly"))
    spec = account_spec("coinw", sim.url, {"api_key": "ck", "api_secret": "cs"}, name="hourly")
    results: asyncio.Queue[PollResult] = asyncio.Queue()
    async with Scheduler(results.put, rand=lambda: 0.01) as scheduler:
        await scheduler.apply([PollPlan(make_adapter("coinw", spec, http), 3600.0)])
        first = await within(results.get(), "the hourly account's first poll", 3.0)
    assert first.ok
