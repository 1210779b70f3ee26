"""Every source, every way an answer can go wrong: the real daemon against the real simulator.

One campaign per source runs the daemon (pollers, engine, metrics, outbox, MQTT sink to a
real Mosquitto) over one simulated account per fault case. Each account polls well once,
then gets its fault for ``Case.polls`` polls, then good answers again. The hook in
:class:`~tests.faults.harness.WatchedDaemon` queues the fault right after the first good
poll was handled, so the fault hits exactly the next request, and records every poll with
the engine's view of the account after it. The parametrized tests then check, per case:

- no crash: the daemon keeps polling the account and exits cleanly when stopped;
- no false balance alert: ``available < 5000``, ``pct_change(total, 1m) <= -20`` and
  ``aml_locked > 0`` never fire on rows that hold 10000 USDT and no AML lock;
- failures and age: each failed poll adds one to ``failures`` and leaves the last good
  poll's time alone; ``failures >= 2`` fires on the second and resolves on the next good one;
- the metric: ``balwatch_poll_errors_total`` counts each failed poll under its kind;
- backoff: the next request waits at least the interval, or the Retry-After / lock-out the
  source asked for (checked on the simulator's own request times).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pytest

from balwatch.alert import Alert
from balwatch.errors import ErrorKind, RateLimited
from balwatch.metrics import Metrics
from balwatch.model import Balance
from balwatch.poll import PollResult
from balwatch.scheduler import JITTER, PollPlan, next_delay
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount, SimState
from tests.brokers import Mosquitto, subscribe
from tests.faults.harness import WatchedDaemon, watching_logs, write_config
from tests.faults.wire import (
    AMOUNT_FIELD,
    GOOD_BALANCES,
    OPTIONAL_FIELD,
    REQUIRED_FIELD,
    SOURCES,
    VENUE,
    Raw,
    Row,
    document,
    encode,
    good_rows,
)
from tests.waiting import within

INTERVAL: Final = 0.2
# The least a retry may wait after a failure: the poll interval, jittered.
NEXT_POLL: Final = INTERVAL * (1 - JITTER)
CAMPAIGN_TIMEOUT: Final = 30.0

RULES: Final[list[dict[str, Any]]] = [
    {"name": "low-available", "select": {"assets": ["USDT"]}, "when": "available < 5000"},
    {"name": "sudden-drop", "when": "pct_change(total, 1m) <= -20"},
    {"name": "aml-lock", "when": "aml_locked > 0"},
    {"name": "failing", "when": "failures >= 2"},
]
BALANCE_RULES: Final = frozenset({"low-available", "sudden-drop", "aml-lock"})

UNAVAILABLE, RATE_LIMITED = ErrorKind.UNAVAILABLE, ErrorKind.RATE_LIMITED
AUTH, BAD = ErrorKind.AUTH, ErrorKind.BAD_RESPONSE

HTML_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><h1>Checking your browser</h1></body></html>"
)

# When the account's next request comes after its faulted ones: "soon" (within the run,
# no sooner than ``min_gap``), "held" (not within the run: a long documented lock-out), or
# "any" (randomized, possibly minutes: auth backoff).
NextRequest = Literal["soon", "held", "any"]


@dataclass(frozen=True)
class Case:
    name: str
    fault: Fault  # a template: each run queues a copy, with ``times=polls``
    kind: ErrorKind | None  # None: the answer is good and the poll succeeds
    polls: int = 2
    min_gap: float = NEXT_POLL
    next_request: NextRequest = "soon"
    timeout: str | None = None
    # For a good answer: what its rows must be (the faulted answer was the one parsed).
    rows: Callable[[list[Balance]], bool] | None = None

    @property
    def recovers(self) -> bool:
        """A good poll follows the faulted ones within the run."""
        return self.kind is None or self.next_request == "soon"


def _raw(body: str, *, status: int = 200, content_type: str = "application/json") -> Fault:
    return Fault(FaultKind.RAW, status=status, body=body, content_type=content_type)


def _with(rows: dict[str, Row], asset: str, **fields: object) -> dict[str, Row]:
    return {**rows, asset: {**rows[asset], **fields}}


def _without(rows: dict[str, Row], asset: str, name: str) -> dict[str, Row]:
    return {**rows, asset: {k: v for k, v in rows[asset].items() if k != name}}


def _assets(rows: list[Balance]) -> set[str]:
    return {r.asset for r in rows}


def _usdt(rows: list[Balance]) -> Balance:
    return next(r for r in rows if r.asset == "USDT")


# With the optional field missing, its metric is unknown (None), never zero.
MISSING_OPTIONAL: Final[dict[str, Callable[[Balance], bool]]] = {
    "coinapi": lambda r: r.available is None and r.total is not None,
    "bitso": lambda r: r.pending_withdrawal is None and r.available is not None,
    # No lockBalance: aml_locked is unknown, and so is total (a part would understate it).
    "kunacore": lambda r: r.aml_locked is None and r.total is None,
}

AMOUNTS: Final = {
    "nan": "NaN",
    "infinity": "Infinity",
    "negative": "-5",
    "huge_exponent": "1e400",
    "huge_digits": "9" * 50,
}


def source_cases(source: str) -> list[Case]:
    rows = good_rows(source)
    field_name = AMOUNT_FIELD[source]
    cases = [
        Case("timeout", Fault(FaultKind.TIMEOUT), UNAVAILABLE, timeout="500ms"),
        Case("connection_reset", Fault(FaultKind.RESET), UNAVAILABLE),
        Case("http_500", Fault(FaultKind.STATUS, status=500), UNAVAILABLE),
        Case("http_503", Fault(FaultKind.STATUS, status=503), UNAVAILABLE),
        # CoinAPI: 490 MESSAGE_REJECT EXCHANGE_UNREACHABLE; CoinW: -200 in a 200; else 503.
        Case("outage_reject", Fault(FaultKind.REJECT), UNAVAILABLE),
        Case(
            "http_429_retry_after",
            Fault(FaultKind.STATUS, status=429, retry_after="1"),
            RATE_LIMITED,
            min_gap=1.0,
        ),
        Case("http_429_no_retry_after", Fault(FaultKind.STATUS, status=429), RATE_LIMITED),
        Case("auth", Fault(FaultKind.AUTH), AUTH, polls=1, next_request="any"),
        Case("malformed_json", Fault(FaultKind.MALFORMED_JSON), BAD),
        Case("html_502", Fault(FaultKind.HTML), UNAVAILABLE),
        Case("html_200", _raw(HTML_PAGE, content_type="text/html"), BAD),
        Case("truncated", Fault(FaultKind.TRUNCATED), BAD),
        Case("wrong_types", Fault(FaultKind.WRONG_TYPES), BAD),
        Case("amount_object", _raw(document(source, _with(rows, "USDT", **{field_name: {}}))), BAD),
        *(
            Case(
                f"{name}_{form}",
                _raw(
                    document(
                        source,
                        _with(
                            rows, "USDT", **{field_name: Raw(text) if form == "number" else text}
                        ),
                    )
                ),
                BAD,
            )
            for name, text in AMOUNTS.items()
            for form in ("number", "text")
        ),
        Case(
            "missing_required_field",
            _raw(document(source, _without(rows, "USDT", REQUIRED_FIELD[source]))),
            BAD,
        ),
        Case(
            "extra_fields",
            _raw(
                document(
                    source,
                    _with(rows, "USDT", settlementBalance="7", note={"tags": [1, True]}),
                    extra={"serverTime": 1700000000000, "notice": {"maintenance": False}},
                )
            ),
            None,
            rows=lambda rows: _usdt(rows).extras.get("settlementBalance") == "7",
        ),
        Case(
            "empty_balance_list",
            _raw(document(source, {})),
            None,
            rows=lambda rows: rows == [],
        ),
        Case(
            "asset_vanishes",
            _raw(document(source, {"BTC": rows["BTC"]})),
            None,
            rows=lambda rows: _assets(rows) == {"BTC"},
        ),
    ]
    if source in OPTIONAL_FIELD:
        body = document(source, _without(rows, "USDT", OPTIONAL_FIELD[source]))
        present = MISSING_OPTIONAL[source]
        cases.append(
            Case(
                "missing_optional_field",
                _raw(body),
                None,
                rows=lambda rows: present(_usdt(rows)),
            )
        )
    match source:
        case "coinapi":
            reject = {
                "type": "MESSAGE_REJECT",
                "reject_reason": "JSON_ERROR",
                "exchange_id": VENUE[source],
                "message": "Invalid JSON",
                "rejected_message": "",
            }
            cases += [
                Case(
                    "throttle_retry_after",
                    Fault(FaultKind.THROTTLE, retry_after="1"),
                    RATE_LIMITED,
                    min_gap=1.0,
                ),
                # A reject that blames the request: retrying cannot help, it is a defect.
                Case(
                    "reject_490_request",
                    _raw(encode(reject), status=490, content_type="text/plain"),
                    BAD,
                ),
            ]
        case "bitso":
            cases += [
                Case(
                    "throttle_420_retry_after",
                    Fault(FaultKind.THROTTLE, retry_after="1"),
                    RATE_LIMITED,
                    min_gap=1.0,
                ),
                # No Retry-After: Bitso's documented one-minute lock-out is waited out.
                Case(
                    "throttle_420",
                    Fault(FaultKind.THROTTLE),
                    RATE_LIMITED,
                    polls=1,
                    min_gap=60.0,
                    next_request="held",
                ),
            ]
        case "kunacore":
            cases += [
                Case(
                    "throttle_retry_after",
                    Fault(FaultKind.THROTTLE, retry_after="1"),
                    RATE_LIMITED,
                    min_gap=1.0,
                ),
                Case("throttle_no_retry_after", Fault(FaultKind.THROTTLE), RATE_LIMITED),
            ]
        case "coinw":
            throttled = {"code": "29001", "msg": "API access frequently", "success": False}
            cases += [
                # 29001 in an HTTP 200, no Retry-After: the documented 2 s window is waited.
                Case("code_29001", Fault(FaultKind.THROTTLE), RATE_LIMITED, min_gap=2.0),
                Case(
                    "code_29001_retry_after",
                    dataclasses.replace(_raw(encode(throttled)), retry_after="1"),
                    RATE_LIMITED,
                    min_gap=1.0,
                ),
            ]
    return cases


# --- one campaign per source ------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """One handled poll, with the engine's view of the account right after it."""

    result: PollResult
    failures: int
    last_ok: float | None

    @property
    def kind(self) -> ErrorKind | None:
        return None if self.result.error is None else self.result.error.kind

    @property
    def rows(self) -> list[Balance]:
        assert self.result.rows is not None, f"poll failed: {self.result.error}"
        return self.result.rows

    def __str__(self) -> str:
        return f"{'ok' if self.result.ok else self.result.error}"


@dataclass
class Track:
    case: Case
    account: str
    polls: list[Poll] = field(default_factory=list)
    # (polls handled before the alert was published, alert): an alert published while
    # poll k is handled carries k, so its poll is ``polls[k]``.
    alerts: list[tuple[int, Alert]] = field(default_factory=list)
    fault_poll: int | None = None  # index in ``polls`` of the first faulted poll
    fault_request: int | None = None  # index in the simulator's request times

    @property
    def done(self) -> bool:
        if self.fault_poll is None:
            return False
        seen = len(self.polls) - self.fault_poll
        return seen >= self.case.polls + (1 if self.case.recovers else 0)

    @property
    def start(self) -> int:
        assert self.fault_poll is not None
        return self.fault_poll

    @property
    def faulted(self) -> list[Poll]:
        """The polls that got the fault."""
        return self.polls[self.start : self.start + self.case.polls]

    @property
    def recovery(self) -> Poll:
        """The good poll after the faulted ones."""
        return self.polls[self.start + self.case.polls]

    def history(self) -> list[str]:
        return [str(p) for p in self.polls]


@dataclass
class Campaign:
    source: str
    tracks: dict[str, Track]
    alerts: list[Alert]
    delivered: list[dict[str, Any]]  # alert documents the MQTT subscriber received
    metrics: Metrics
    logs: list[dict[str, Any]]
    request_times: dict[str, list[float]]
    running_at_end: bool
    exit_code: int | None
    ended: float

    def track(self, case: str) -> Track:
        return self.tracks[account_name(self.source, case)]


def account_name(source: str, case: str) -> str:
    return f"{source}-{case}".replace("_", "-")


def _account_config(source: str, name: str, url: str, case: Case) -> dict[str, Any]:
    credentials = {"api_key": f"key-{name}"}
    if source in ("bitso", "coinw"):
        credentials["api_secret"] = f"secret-{name}"
    config: dict[str, Any] = {
        "name": name,
        "exchange": source,
        "base_url": url,
        "credentials": credentials,
    }
    if case.timeout is not None:
        config["timeout"] = case.timeout
    return config


async def run_campaign(source: str, directory: Path) -> Campaign:
    cases = source_cases(source)
    tracks = {account_name(source, c.name): Track(c, account_name(source, c.name)) for c in cases}
    sim_accounts = [
        SimAccount(
            name=name,
            exchange=source,
            api_key=f"key-{name}",
            api_secret=f"secret-{name}",
            balances={VENUE[source]: copy.deepcopy(GOOD_BALANCES)},
        )
        for name in tracks
    ]
    alerts: list[Alert] = []
    all_done = asyncio.Event()

    with watching_logs() as logs:
        logs.bind_loop()
        async with (
            Simulator(SimState(sim_accounts)) as sim,
            Mosquitto() as broker,
            subscribe(broker.port, ["balwatch/alerts/#"]) as subscriber,
        ):
            config = write_config(
                directory,
                accounts=[_account_config(source, n, sim.url, t.case) for n, t in tracks.items()],
                rules=RULES,
                sinks=[{"name": "mqtt", "type": "mqtt", "url": broker.url}],
                state_dir=directory / "state",
                poll_interval=f"{round(INTERVAL * 1000)}ms",
            )

            def on_alerts(batch: Sequence[Alert]) -> None:
                for alert in batch:
                    alerts.append(alert)
                    track = tracks.get(alert.account)
                    if track is not None:
                        track.alerts.append((len(track.polls), alert))

            def on_poll(result: PollResult) -> None:
                track = tracks[result.account]
                state = next(a for a in daemon.engine.accounts() if a.account == result.account)
                track.polls.append(Poll(result, state.failures, state.last_ok))
                if track.fault_poll is None and result.ok:
                    sim_account = sim.state.accounts[result.account]
                    track.fault_poll = len(track.polls)
                    track.fault_request = len(sim_account.request_times)
                    sim_account.faults.append(
                        dataclasses.replace(track.case.fault, times=track.case.polls)
                    )
                if all(t.done for t in tracks.values()):
                    all_done.set()

            daemon = WatchedDaemon(config, on_poll=on_poll, on_alerts=on_alerts)
            running = asyncio.create_task(daemon.run())
            finished = asyncio.create_task(all_done.wait())
            await asyncio.wait(
                {running, finished}, timeout=CAMPAIGN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            finished.cancel()
            ended = time.monotonic()
            running_at_end = not running.done()
            daemon.stopping.set()
            # A crash of the daemon raises here: the tests error.
            exit_code = await within(running, "the daemon to stop", 30)
            delivered = [
                _json(m.payload) for m in await subscriber.drain() if m.payload is not None
            ]
            request_times = {n: list(a.request_times) for n, a in sim.state.accounts.items()}
    return Campaign(
        source=source,
        tracks=tracks,
        alerts=alerts,
        delivered=delivered,
        metrics=daemon.metrics,
        logs=logs.entries,
        request_times=request_times,
        running_at_end=running_at_end,
        exit_code=exit_code,
        ended=ended,
    )


def _json(payload: object) -> dict[str, Any]:
    assert isinstance(payload, bytes | str)
    doc: dict[str, Any] = json.loads(payload)
    return doc


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Campaign]]:
    """Runs each source's campaign on first use (one event loop each) and keeps the outcome."""
    done: dict[str, Campaign | BaseException] = {}

    def get(source: str) -> Campaign:
        if source not in done:
            try:
                done[source] = asyncio.run(run_campaign(source, tmp_path_factory.mktemp(source)))
            except Exception as exc:
                done[source] = exc
        outcome = done[source]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    yield get


CASES: Final = [
    pytest.param(s, c.name, id=f"{s}-{c.name}") for s in SOURCES for c in source_cases(s)
]


# --- per case ---------------------------------------------------------------------------


def _track(campaigns: Callable[[str], Campaign], source: str, case: str) -> tuple[Campaign, Track]:
    campaign = campaigns(source)
    track = campaign.track(case)
    assert track.fault_poll is not None, f"no good first poll to start from: {track.history()}"
    assert track.done, f"the account stopped short: {track.history()}"
    return campaign, track


@pytest.mark.parametrize(("source", "case"), CASES)
def test_poll_outcome(source: str, case: str, campaigns: Callable[[str], Campaign]) -> None:
    """Each faulted poll fails with the right kind (or parses the odd but good answer), and
    the daemon goes on polling the account: the next good answer is read again."""
    _, track = _track(campaigns, source, case)
    expected = track.case
    assert [p.kind for p in track.faulted] == [expected.kind] * expected.polls, track.history()
    if expected.rows is not None:
        for poll in track.faulted:
            assert expected.rows(poll.rows), f"unexpected rows: {poll.rows}"
    if expected.recovers:
        assert track.recovery.result.ok, f"no good poll after the fault: {track.history()}"
        assert _assets(track.recovery.rows) == set(GOOD_BALANCES), track.recovery.rows


@pytest.mark.parametrize(("source", "case"), CASES)
def test_no_false_balance_alert(
    source: str, case: str, campaigns: Callable[[str], Campaign]
) -> None:
    """An error, an empty list, a vanished asset or a missing field is not a balance."""
    _, track = _track(campaigns, source, case)
    false_alerts = [(k, a.rule, a.event) for k, a in track.alerts if a.rule in BALANCE_RULES]
    assert false_alerts == []


@pytest.mark.parametrize(("source", "case"), CASES)
def test_failures_and_age(source: str, case: str, campaigns: Callable[[str], Campaign]) -> None:
    """A failed poll adds a failure and leaves the last good poll's time (age grows); a good
    poll resets both. ``failures >= 2`` fires on the second failure, resolves on the next
    good poll, and never fires for one failure or for a good answer."""
    _, track = _track(campaigns, source, case)
    expected = track.case
    before = track.polls[track.start - 1]
    assert before.result.ok and before.last_ok is not None
    last_ok = before.last_ok
    for n, poll in enumerate(track.faulted, 1):
        if expected.kind is None:
            assert poll.failures == 0 and poll.last_ok is not None and poll.last_ok > last_ok
            last_ok = poll.last_ok
        else:
            assert (poll.failures, poll.last_ok) == (n, last_ok), f"after failed poll {n}"
    if expected.recovers:
        recovery = track.recovery
        assert recovery.failures == 0, "a good poll resets failures"
        assert recovery.last_ok is not None and recovery.last_ok > last_ok, "and age"

    failing = [(k, a.event) for k, a in track.alerts if a.rule == "failing"]
    if expected.kind is not None and expected.polls >= 2 and expected.recovers:
        assert failing == [(track.start + 1, "firing"), (track.start + 2, "resolved")]
    else:
        assert failing == []
    auth = [(k, a.event) for k, a in track.alerts if a.rule == "source_auth_failed"]
    if expected.kind is AUTH:
        assert (track.start, "firing") in auth, "an auth failure raises source_auth_failed"
    else:
        assert auth == []


@pytest.mark.parametrize(("source", "case"), CASES)
def test_error_metric(source: str, case: str, campaigns: Callable[[str], Campaign]) -> None:
    """``balwatch_poll_errors_total{kind}`` counts every failed poll under its kind, only."""
    campaign, track = _track(campaigns, source, case)
    labels = {"account": track.account, "exchange": source}
    counted = {
        kind.value: campaign.metrics.registry.get_sample_value(
            "balwatch_poll_errors_total", {**labels, "kind": kind.value}
        )
        for kind in ErrorKind
    }
    expected = {kind.value: 0.0 for kind in ErrorKind}
    if track.case.kind is not None:
        expected[track.case.kind.value] = float(track.case.polls)
    assert counted == expected


@pytest.mark.parametrize(("source", "case"), CASES)
def test_backoff(source: str, case: str, campaigns: Callable[[str], Campaign]) -> None:
    """On the simulator's clock: the request after a faulted one waits at least the poll
    interval, or the Retry-After / lock-out the source asked for."""
    campaign, track = _track(campaigns, source, case)
    expected = track.case
    times = campaign.request_times[track.account]
    first = track.fault_request
    assert first is not None
    if expected.recovers:
        gaps = [times[first + n + 1] - times[first + n] for n in range(expected.polls)]
        assert all(gap >= expected.min_gap for gap in gaps), (
            f"retried after {[round(g, 3) for g in gaps]} s; must wait >= {expected.min_gap} s"
        )
    if expected.next_request == "held":
        error = track.faulted[0].result.error
        assert isinstance(error, RateLimited) and error.retry_after == expected.min_gap, error
        assert len(times) == first + 1, "retried within the source's lock-out"
        assert campaign.ended - times[first] > 1.0, "the run was too short to show the wait"


# --- per source ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_daemon_survives_every_fault(source: str, campaigns: Callable[[str], Campaign]) -> None:
    campaign = campaigns(source)
    assert campaign.running_at_end, "the daemon stopped by itself"
    assert campaign.exit_code == 0
    unfinished = [name for name, t in campaign.tracks.items() if not t.done]
    assert unfinished == [], f"accounts that stopped short: {unfinished}"
    errors = [e for e in campaign.logs if e["level"] in ("error", "exception", "critical")]
    assert errors == [], f"errors logged: {errors[:3]}"
    handler = [e for e in campaign.logs if e["event"] == "poll_result_handler_failed"]
    assert handler == []


@pytest.mark.parametrize("source", SOURCES)
def test_every_alert_reaches_the_broker(source: str, campaigns: Callable[[str], Campaign]) -> None:
    campaign = campaigns(source)
    published = sorted(str(a.to_json()["id"]) for a in campaign.alerts)
    delivered = sorted(d["id"] for d in campaign.delivered)
    assert delivered == published
    rules = {d["rule"] for d in campaign.delivered}
    assert rules <= {"failing", "source_auth_failed"}, rules
    # Every failing case fired and resolved `failing` once: nothing lost on the way.
    failing = sum(
        1
        for t in campaign.tracks.values()
        if t.case.kind is not None and t.case.polls >= 2 and t.case.recovers
    )
    assert sum(1 for d in campaign.delivered if d["rule"] == "failing") == 2 * failing


def test_auth_failure_is_never_retried_fast(campaigns: Callable[[str], Campaign]) -> None:
    """Never retry an auth error fast: it can lock the key (docs/sources.md).

    The daemon's poll plan (default ``auth_backoff``, 60 s base) must keep the first retry
    after each source's auth failure well away from the poll interval, whatever the jitter.
    """
    for source in SOURCES:
        error = next(
            p.result.error
            for p in campaigns(source).track("auth").polls
            if p.result.error is not None
        )
        plan = PollPlan(adapter=None, interval=INTERVAL)  # type: ignore[arg-type]
        delays = [next_delay(plan, error, 1, random.random) for _ in range(2000)]
        assert min(delays) >= 30.0, (
            f"{source}: first retry after an auth failure came after {min(delays):.2f} s: "
            "PollPlan.auth_backoff uses full jitter (Backoff.delay draws from [0, 60 s)), so "
            "the retry can come at the poll interval; auth retries need a floor"
        )
