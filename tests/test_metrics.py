"""The daemon's metrics: the series after recording, read back from the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

import balwatch.metrics
from balwatch.errors import AuthError, BadResponse, SourceError, SourceUnavailable
from balwatch.latest import LatestBalances
from balwatch.metrics import POLL_BUCKETS, Metrics
from balwatch.model import Balance
from balwatch.outbox.worker import SinkStats
from balwatch.poll import PollResult
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule

T0 = 1_800_000_000.0
FAKE_KEY = "sk_live_FAKE0123456789abcdef"


def good(account: str = "treasury", exchange: str = "bitso", seconds: float = 0.2) -> PollResult:
    row = Balance(account, exchange, exchange, "USDT", "usdt", available=Decimal("10"))
    return PollResult(account, exchange, [row], None, seconds)


def failed(
    error: SourceError, account: str = "treasury", exchange: str = "bitso", seconds: float = 2.0
) -> PollResult:
    return PollResult(account, exchange, None, error, seconds)


def metrics() -> Metrics:
    return Metrics("1.2.3", clock=lambda: T0)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(f"balwatch_{name}", labels)


def sink_stats(depth: int, delivered: int, failed: int, dead: int) -> SinkStats:
    return SinkStats(
        delivered=delivered,
        failed=failed,
        dead=dead,
        dead_letters=dead,
        depth=depth,
        sending=0,
        last_error=None,
    )


def test_polls_errors_duration_and_last_success() -> None:
    m = metrics()
    m.record_poll(good(seconds=0.2))
    m.record_poll(failed(SourceUnavailable("bitso", "timeout"), seconds=3.0))
    m.record_poll(failed(AuthError("bitso", "bad key")))

    acct = {"account": "treasury", "exchange": "bitso"}
    assert value(m, "polls_total", **acct) == 3
    assert value(m, "poll_errors_total", **acct, kind="unavailable") == 1
    assert value(m, "poll_errors_total", **acct, kind="auth") == 1
    for kind in ("rate_limited", "bad_response"):  # present at 0 before they first happen
        assert value(m, "poll_errors_total", **acct, kind=kind) == 0
    assert value(m, "poll_duration_seconds_count", exchange="bitso") == 3
    assert value(m, "poll_duration_seconds_bucket", exchange="bitso", le="0.25") == 1
    assert value(m, "poll_duration_seconds_bucket", exchange="bitso", le="2.5") == 2
    assert value(m, "last_successful_poll_timestamp_seconds", account="treasury") == T0


def test_duration_buckets_span_fast_answers_to_long_timeouts() -> None:
    assert POLL_BUCKETS[0] == 0.01
    assert POLL_BUCKETS[-1] == 30.0
    assert list(POLL_BUCKETS) == sorted(POLL_BUCKETS)


def test_an_account_that_never_succeeded_has_no_last_success() -> None:
    m = metrics()
    m.record_poll(failed(SourceUnavailable("bitso", "down")))
    assert value(m, "last_successful_poll_timestamp_seconds", account="treasury") is None


def test_forgotten_account_loses_its_series_and_others_keep_theirs() -> None:
    m = metrics()
    m.record_poll(good("gone"))
    m.record_poll(good("kept"))
    m.forget_account("gone")
    m.forget_account("never-seen")  # no error

    assert value(m, "polls_total", account="gone", exchange="bitso") is None
    assert value(m, "poll_errors_total", account="gone", exchange="bitso", kind="auth") is None
    assert value(m, "last_successful_poll_timestamp_seconds", account="gone") is None
    assert value(m, "polls_total", account="kept", exchange="bitso") == 1


def test_an_account_moved_to_another_exchange_keeps_no_series_under_the_old_one() -> None:
    m = metrics()
    m.record_poll(good("treasury", "bitso"))
    m.record_poll(good("treasury", "coinw"))
    assert value(m, "polls_total", account="treasury", exchange="bitso") is None
    assert value(m, "polls_total", account="treasury", exchange="coinw") == 1


def test_rule_evaluations_alerts_and_active_states() -> None:
    low = Rule(name="low", when=parse_expression("available < 5"), severity="critical")
    slow = Rule(name="slow", when=parse_expression("available < 50"), for_=60)
    engine = Engine([low, slow], clock=lambda: T0)
    m = metrics()

    def poll(available: str, now: float) -> None:
        row = Balance("treasury", "bitso", "bitso", "USDT", "usdt", available=Decimal(available))
        m.record_alerts(engine.observe("treasury", "bitso", [row], now))
        m.record_evaluation("poll")
        m.set_active(len(engine.pending()), len(engine.firing()))

    poll("1", T0)  # low fires at once, slow starts pending
    assert value(m, "alerts_active", state="firing") == 1
    assert value(m, "alerts_active", state="pending") == 1
    poll("100", T0 + 10)  # low resolves, slow drops silently
    m.record_alerts(engine.tick(T0 + 20))
    m.record_evaluation("tick")

    low_labels = {"rule": "low", "severity": "critical"}
    assert value(m, "alerts_total", **low_labels, event="firing") == 1
    assert value(m, "alerts_total", **low_labels, event="resolved") == 1
    assert value(m, "alerts_total", rule="slow", severity="warning", event="firing") is None
    assert value(m, "alerts_active", state="firing") == 0
    assert value(m, "alerts_active", state="pending") == 0
    assert value(m, "rule_evaluations_total", trigger="poll") == 2
    assert value(m, "rule_evaluations_total", trigger="tick") == 1


def test_outbox_counters_follow_cumulative_snapshots_across_a_worker_restart() -> None:
    m = metrics()
    m.set_outbox({"mqtt": sink_stats(depth=3, delivered=5, failed=2, dead=0)})
    m.set_outbox({"mqtt": sink_stats(depth=0, delivered=9, failed=2, dead=1)})
    assert value(m, "outbox_depth", sink="mqtt") == 0
    assert value(m, "deliveries_total", sink="mqtt", outcome="delivered") == 9
    assert value(m, "deliveries_total", sink="mqtt", outcome="failed") == 2
    assert value(m, "deliveries_total", sink="mqtt", outcome="dead") == 1

    # A reload replaced the worker: its counts start again from zero.
    m.set_outbox({"mqtt": sink_stats(depth=1, delivered=4, failed=0, dead=0)})
    assert value(m, "deliveries_total", sink="mqtt", outcome="delivered") == 13
    assert value(m, "deliveries_total", sink="mqtt", outcome="failed") == 2


def test_outbox_adapter_tolerates_mappings_with_missing_and_foreign_keys() -> None:
    m = metrics()
    m.set_outbox({"hook": {"depth": 2, "delivered": 1, "sending": 7, "last_error": "x"}})
    m.set_outbox({"hook": {"delivered": True, "failed": -1, "dead": "3"}})  # none is a count
    assert value(m, "outbox_depth", sink="hook") == 2
    assert value(m, "deliveries_total", sink="hook", outcome="delivered") == 1
    assert value(m, "deliveries_total", sink="hook", outcome="failed") == 0
    assert value(m, "deliveries_total", sink="hook", outcome="dead") == 0


def test_a_sink_gone_from_the_outbox_loses_its_depth_and_restarts_its_baseline() -> None:
    m = metrics()
    m.set_outbox({"hook": {"depth": 4, "delivered": 6}, "mqtt": {"depth": 1}})
    m.set_outbox({"mqtt": {"depth": 0}})
    assert value(m, "outbox_depth", sink="hook") is None
    assert value(m, "deliveries_total", sink="hook", outcome="delivered") == 6
    m.set_outbox({"hook": {"depth": 0, "delivered": 2}})  # back, with a fresh worker
    assert value(m, "deliveries_total", sink="hook", outcome="delivered") == 8


def test_reloads_and_build_info() -> None:
    m = metrics()
    assert value(m, "config_reload_total", result="ok") == 0
    assert value(m, "config_reload_total", result="error") == 0
    m.record_reload(ok=True)
    m.record_reload(ok=False)
    m.record_reload(ok=False)
    assert value(m, "config_reload_total", result="ok") == 1
    assert value(m, "config_reload_total", result="error") == 2
    assert value(m, "build_info", version="1.2.3") == 1


def test_each_daemon_has_its_own_registry() -> None:
    first, second = metrics(), metrics()  # the global registry would refuse the second
    first.record_poll(good())
    assert value(first, "polls_total", account="treasury", exchange="bitso") == 1
    assert value(second, "polls_total", account="treasury", exchange="bitso") is None
    assert b"python_gc" not in generate_latest(first.registry)


def test_error_messages_never_reach_the_exposition() -> None:
    m = metrics()
    m.record_poll(failed(AuthError("bitso", f"key {FAKE_KEY} rejected")))
    m.record_poll(failed(BadResponse("bitso", f"echo {FAKE_KEY}", asset="USDT", field="x")))
    text = generate_latest(m.registry).decode()
    assert FAKE_KEY not in text
    assert "rejected" not in text
    assert 'kind="auth"} 1.0' in text
    assert 'kind="bad_response"} 1.0' in text


def test_the_exposition_has_no_created_timestamps() -> None:
    m = metrics()
    m.record_poll(good(seconds=0.2))
    text = generate_latest(m.registry).decode()
    assert "balwatch_polls_total" in text and "_created" not in text


# --- balances ----------------------------------------------------------------------------


def coinapi_rows(btc_total: str = "3.5") -> list[Balance]:
    return [
        Balance(
            "ems", "coinapi", "BINANCESPOT", "BTC", "BTC",
            total=Decimal(btc_total), available=Decimal("3.1"), locked=Decimal("0.4"),
            rate_usd=Decimal("61250.10"),
        ),
        Balance("ems", "coinapi", "KRAKEN", "ETH", "ETH", total=Decimal("42")),
    ]  # fmt: skip


def bitso_rows() -> list[Balance]:
    return [
        Balance(
            "treasury", "bitso", "bitso", "USDT", "usdt",
            total=Decimal("10000.5"), available=Decimal("9000.25"), locked=Decimal("0"),
        ),
        Balance("treasury", "bitso", "bitso", "MXN", "mxn", total=Decimal("90000")),
    ]  # fmt: skip


def with_balances() -> tuple[Metrics, LatestBalances]:
    latest = LatestBalances(clock=lambda: T0)
    return Metrics("1.2.3", clock=lambda: T0, balances=latest), latest


def balance(m: Metrics, account: str, venue: str, asset: str, metric: str) -> float | None:
    exchange = {"treasury": "bitso", "ems": "coinapi"}[account]
    labels = dict(account=account, exchange=exchange, venue=venue, asset=asset, metric=metric)
    return m.registry.get_sample_value("balwatch_balance", labels)


def balance_usd(m: Metrics, venue: str, asset: str, metric: str) -> float | None:
    labels = dict(account="ems", exchange="coinapi", venue=venue, asset=asset, metric=metric)
    return m.registry.get_sample_value("balwatch_balance_usd", labels)


def balance_series(m: Metrics) -> set[tuple[str, ...]]:
    return {
        (sample.name, *sample.labels.values())
        for family in m.registry.collect()
        for sample in family.samples
        if sample.name.startswith("balwatch_balance")
    }


def test_each_reported_metric_of_each_row_is_a_balance_series() -> None:
    m, latest = with_balances()
    latest.update(PollResult("treasury", "bitso", bitso_rows(), None, 0.1))
    latest.update(PollResult("ems", "coinapi", coinapi_rows(), None, 0.1))

    assert balance(m, "treasury", "bitso", "USDT", "total") == 10000.5
    assert balance(m, "treasury", "bitso", "USDT", "available") == 9000.25
    assert balance(m, "treasury", "bitso", "USDT", "locked") == 0  # reported as 0: a series
    assert balance(m, "treasury", "bitso", "MXN", "total") == 90000
    assert balance(m, "ems", "BINANCESPOT", "BTC", "rate_usd") == 61250.10
    # Not reported is not zero: no series at all.
    assert balance(m, "treasury", "bitso", "MXN", "available") is None
    assert balance(m, "treasury", "bitso", "USDT", "pending_withdrawal") is None
    assert len([s for s in balance_series(m) if s[0] == "balwatch_balance"]) == 3 + 1 + 4 + 1


def test_balance_usd_is_each_amount_times_the_rows_price() -> None:
    m, latest = with_balances()
    latest.update(PollResult("ems", "coinapi", coinapi_rows(), None, 0.1))
    latest.update(PollResult("treasury", "bitso", bitso_rows(), None, 0.1))

    assert balance_usd(m, "BINANCESPOT", "BTC", "total") == float(
        Decimal("3.5") * Decimal("61250.10")
    )
    assert balance_usd(m, "BINANCESPOT", "BTC", "available") == 189875.31
    assert balance_usd(m, "BINANCESPOT", "BTC", "locked") == 24500.04
    # The price is not an amount; a row without a price has no USD value.
    assert balance_usd(m, "BINANCESPOT", "BTC", "rate_usd") is None
    assert balance_usd(m, "KRAKEN", "ETH", "total") is None
    usd = {s for s in balance_series(m) if s[0] == "balwatch_balance_usd"}
    assert {s[1] for s in usd} == {"ems"} and len(usd) == 3


def test_a_failed_poll_keeps_the_last_good_values_and_a_vanished_row_its_series_not() -> None:
    m, latest = with_balances()
    latest.update(PollResult("ems", "coinapi", coinapi_rows(), None, 0.1))
    latest.update(PollResult("ems", "coinapi", None, SourceUnavailable("coinapi", "down"), 2.0))
    assert balance(m, "ems", "BINANCESPOT", "BTC", "total") == 3.5
    assert balance(m, "ems", "KRAKEN", "ETH", "total") == 42

    latest.update(PollResult("ems", "coinapi", coinapi_rows("2.1")[:1], None, 0.1))
    assert balance(m, "ems", "BINANCESPOT", "BTC", "total") == 2.1
    assert balance(m, "ems", "KRAKEN", "ETH", "total") is None

    latest.update(PollResult("ems", "coinapi", [], None, 0.1))  # an empty answer holds nothing
    assert balance_series(m) == set()


def test_a_forgotten_account_loses_its_balance_series() -> None:
    m, latest = with_balances()
    latest.update(PollResult("ems", "coinapi", coinapi_rows(), None, 0.1))
    latest.update(PollResult("treasury", "bitso", bitso_rows(), None, 0.1))
    latest.forget("ems")
    assert {s[1] for s in balance_series(m)} == {"treasury"}


def test_balances_can_be_hidden_and_shown_again() -> None:
    m, latest = with_balances()
    latest.update(PollResult("treasury", "bitso", bitso_rows(), None, 0.1))
    m.export_balances(False)
    text = generate_latest(m.registry).decode()
    assert "balwatch_balance" not in text  # not even the HELP lines
    assert "balwatch_polls_total" in text or "balwatch_build_info" in text
    m.export_balances(True)
    assert balance(m, "treasury", "bitso", "USDT", "total") == 10000.5


def test_balance_families_are_described_before_any_poll() -> None:
    m, _ = with_balances()
    text = generate_latest(m.registry).decode()
    assert "# TYPE balwatch_balance gauge" in text
    assert "# TYPE balwatch_balance_usd gauge" in text
    assert "balwatch_last_successful_poll_timestamp_seconds" in text  # named in the help


def test_a_daemon_without_a_balance_source_has_no_balance_series() -> None:
    text = generate_latest(metrics().registry).decode()
    assert "balwatch_balance" not in text


# --- rendering /metrics: in slices on the loop, balance texts reused per poll -----------


def many_accounts(latest: LatestBalances, m: Metrics, accounts: int = 60) -> None:
    """Enough accounts that every big family is rendered in several pieces."""
    for i in range(accounts):
        rows = [row._replace(account=f"ems-{i}") for row in coinapi_rows(f"{i}.5")]
        result = PollResult(f"ems-{i}", "coinapi", rows, None, 0.01 * i)
        latest.update(result)
        m.record_poll(result)


def sample(text: bytes, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


async def render(m: Metrics) -> bytes:
    from balwatch.metrics import Registry

    assert isinstance(m.registry, Registry)
    return await m.registry.render()


async def test_render_is_generate_latest_byte_for_byte() -> None:
    m, latest = with_balances()
    many_accounts(latest, m)
    m.record_poll(failed(SourceUnavailable("bitso", "down")))
    m.set_outbox({"mqtt": sink_stats(depth=3, delivered=5, failed=2, dead=0)})
    pieces = list(m.registry.pieces())
    assert len(pieces) > 20  # sliced, not one render
    expected = generate_latest(m.registry)
    assert b"".join(pieces) == expected
    assert await render(m) == expected
    assert await render(m) == expected  # from the reused balance texts, the same again
    assert await render(metrics()) == generate_latest(metrics().registry)  # no balance source


async def test_a_poll_shows_at_the_next_render_and_only_its_account_is_rendered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, latest = with_balances()
    many_accounts(latest, m)
    await render(m)
    rendered: list[str] = []
    add_rows = balwatch.metrics._add_rows

    def counting(rows: Sequence[Balance], *families: GaugeMetricFamily) -> None:
        rendered.append(rows[0].account)
        add_rows(rows, *families)

    monkeypatch.setattr(balwatch.metrics, "_add_rows", counting)
    assert await render(m) == generate_latest(m.registry)
    rendered.clear()

    rows = [row._replace(account="ems-7") for row in coinapi_rows("99.25")]
    latest.update(PollResult("ems-7", "coinapi", rows, None, 0.1))
    text = await render(m)
    assert rendered == ["ems-7"]  # the other 59 accounts' texts were reused
    assert text == generate_latest(m.registry)
    btc = dict(account="ems-7", exchange="coinapi", venue="BINANCESPOT", asset="BTC")
    assert sample(text, "balwatch_balance", **btc, metric="total") == 99.25
    usd = float(Decimal("99.25") * Decimal("61250.10"))
    assert sample(text, "balwatch_balance_usd", **btc, metric="total") == usd

    # A failed poll keeps the rows, so their text too.
    rendered.clear()
    latest.update(PollResult("ems-7", "coinapi", None, SourceUnavailable("coinapi", "x"), 2))
    assert await render(m) == text
    assert rendered == []


async def test_a_forgotten_account_or_a_vanished_row_loses_its_series_at_the_next_render() -> None:
    m, latest = with_balances()
    many_accounts(latest, m, accounts=3)
    await render(m)
    latest.forget("ems-1")
    latest.update(PollResult("ems-2", "coinapi", [], None, 0.1))  # holds nothing now
    rows = [row._replace(account="ems-0") for row in coinapi_rows()[:1]]  # KRAKEN ETH gone
    latest.update(PollResult("ems-0", "coinapi", rows, None, 0.1))
    text = (await render(m)).decode()
    assert text == generate_latest(m.registry).decode()
    balance_lines = [line for line in text.splitlines() if line.startswith("balwatch_balance")]
    assert balance_lines and all('account="ems-0"' in line for line in balance_lines)
    assert "KRAKEN" not in text


async def test_hidden_balances_render_no_balance_text_and_come_back() -> None:
    m, latest = with_balances()
    many_accounts(latest, m, accounts=2)
    shown = await render(m)
    m.export_balances(False)
    hidden = await render(m)
    assert b"balwatch_balance" not in hidden and hidden == generate_latest(m.registry)
    m.export_balances(True)
    assert await render(m) == shown


async def test_render_gives_the_loop_turns_on_the_way() -> None:
    m, latest = with_balances()
    many_accounts(latest, m, accounts=200)
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    worker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    assert await m.registry.render(slice_seconds=0, gap=0) == generate_latest(m.registry)
    done = True
    await worker
    assert turns - before > 20  # a turn after every piece
