"""Portfolio rules (group_by): which rows make which group, each aggregate, every no-data
case, history per group across a restart, reloads, and what a group's alert carries.
Fake clocks only; the restart goes through the real SQLite state store."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balwatch.alert import Alert, fingerprint, group_fingerprint
from balwatch.model import Balance
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.groups import GroupView
from balwatch.rules.rule import Rule, RuleError
from balwatch.rules.select import Selector
from balwatch.rules.template import Template
from balwatch.state.base import StateSnapshot
from balwatch.state.sqlite import SqliteStateStore

D = Decimal
T0 = 1_800_000_000.0
EXCHANGES = {"bitso-hot": "bitso", "kuna-hot": "kunacore", "coinw-spot": "coinw", "ems": "coinapi"}


def rule(name: str, when: str, group_by: Sequence[str] = ("asset",), **kw: Any) -> Rule:
    clear = kw.pop("clear", None)
    return Rule(
        name=name,
        when=parse_expression(when),
        clear=None if clear is None else parse_expression(clear),
        group_by=tuple(group_by),
        **kw,
    )


def row(
    account: str, asset: str = "USDT", venue: str | None = None, **metrics: str | None
) -> Balance:
    exchange = EXCHANGES[account]
    values = {k: None if v is None else D(v) for k, v in metrics.items()}
    return Balance(account, exchange, venue or exchange, asset, asset.lower(), **values)  # type: ignore[arg-type]


def poll(e: Engine, t: float, account: str, *rows: Balance) -> list[Alert]:
    """One good poll of ``account``, then the tick that evaluates its groups."""
    return e.observe(account, EXCHANGES[account], list(rows), t) + e.tick(t)


def fail(e: Engine, t: float, account: str) -> list[Alert]:
    return e.poll_failed(account, EXCHANGES[account], t) + e.tick(t)


def engine(*rules: Rule, **kw: Any) -> Engine:
    return Engine(rules, clock=lambda: T0, **kw)


def views(e: Engine, rule_name: str | None = None) -> dict[str, GroupView]:
    """Each group by its text (``asset=USDT``), for one rule or all."""
    return {
        " ".join(f"{k}={v}" for k, v in g.group.items()) or "all": g
        for g in e.groups.views(T0)
        if rule_name is None or g.rule == rule_name
    }


def events(alerts: Sequence[Alert]) -> list[tuple[str, str]]:
    return [(a.event, a.rule) for a in alerts]


FLOOR = rule("usdt-floor", "sum(available) < 100", selector=Selector(assets=["USDT"]))


# --------------------------------------------------------------------------- groups


def test_group_by_puts_rows_with_equal_keys_together() -> None:
    by = {
        "asset": rule("a", "sum(total) > 0"),
        "venue": rule("v", "sum(total) > 0", ("venue",)),
        "account": rule("c", "sum(total) > 0", ("account",)),
        "exchange": rule("x", "sum(total) > 0", ("exchange",)),
        "desk-asset": rule("d", "sum(total) > 0", ("desk", "asset")),
        "all": rule("all", "sum(total) > 0", ()),
    }
    e = engine(
        *by.values(), account_labels={"bitso-hot": {"desk": "payouts"}, "ems": {"desk": "trading"}}
    )
    poll(e, T0, "bitso-hot", row("bitso-hot", total="20"), row("bitso-hot", "BTC", total="1"))
    poll(e, T0, "kuna-hot", row("kuna-hot", total="15"))
    poll(
        e,
        T0,
        "ems",
        row("ems", venue="BINANCESPOT", total="9"),
        row("ems", "BTC", venue="BINANCESPOT", total="3"),
        row("ems", venue="KRAKEN", total="6"),
    )
    rows = {rule: {k: g.rows for k, g in views(e, by[rule].name).items()} for rule in by}
    assert rows == {
        "asset": {"asset=BTC": 2, "asset=USDT": 4},
        "venue": {"venue=BINANCESPOT": 2, "venue=KRAKEN": 1, "venue=bitso": 2, "venue=kunacore": 1},
        "account": {"account=bitso-hot": 2, "account=ems": 3, "account=kuna-hot": 1},
        "exchange": {"exchange=bitso": 2, "exchange=coinapi": 3, "exchange=kunacore": 1},
        # kuna-hot has no desk label: its rows group under an empty desk
        "desk-asset": {
            "desk=None asset=USDT": 1,
            "desk=payouts asset=BTC": 1,
            "desk=payouts asset=USDT": 1,
            "desk=trading asset=BTC": 1,
            "desk=trading asset=USDT": 2,
        },
        "all": {"all": 6},
    }
    assert views(e, "a")["asset=USDT"].values == {"sum(total)": D(50)}


def test_each_aggregate_over_row_expressions() -> None:
    r = rule(
        "funcs",
        "sum(available - pending_withdrawal) > 0 and min(available) > 0 and max(available) > 0 "
        "and avg(available) > 0 and count() > 0 and sum(usd(total)) > 0",
    )
    e = engine(r)
    poll(
        e,
        T0,
        "bitso-hot",
        row("bitso-hot", available="100", pending_withdrawal="30", total="110", rate_usd="1.01"),
    )
    poll(
        e,
        T0,
        "kuna-hot",
        row("kuna-hot", available="40", pending_withdrawal="0", total="40", rate_usd="0.99"),
    )
    poll(
        e,
        T0,
        "coinw-spot",
        row("coinw-spot", available="7.5", pending_withdrawal="2.5", total="10", rate_usd="1"),
    )
    assert views(e)["asset=USDT"].values == {
        "sum(available - pending_withdrawal)": D("115"),
        "min(available)": D("7.5"),
        "max(available)": D("100"),
        "avg(available)": D("49.16666666666666666666666666666667"),
        "count()": D(3),
        "sum(usd(total))": D("160.70"),  # 111.10 + 39.60 + 10
    }


@pytest.mark.parametrize(
    ("when", "start", "low"),
    [
        ("sum(available) < 100", "70", "50"),  # 110, then 90
        ("min(available) < 10", "70", "5"),
        ("max(available) < 50", "70", "45"),  # the other account has 40
        ("avg(available) < 30", "70", "10"),  # 55, then 25
    ],
)
def test_each_aggregate_fires_and_resolves(when: str, start: str, low: str) -> None:
    e = engine(rule("r", when))
    e.register_account("bitso-hot", "bitso", T0)
    e.register_account("kuna-hot", "kunacore", T0)
    assert poll(e, T0, "bitso-hot", row("bitso-hot", available="40")) == []
    assert poll(e, T0 + 1, "kuna-hot", row("kuna-hot", available=start)) == []
    assert events(poll(e, T0 + 2, "kuna-hot", row("kuna-hot", available=low))) == [("firing", "r")]
    assert events(poll(e, T0 + 3, "kuna-hot", row("kuna-hot", available=start))) == [
        ("resolved", "r")
    ]


def test_count_counts_the_rows_that_are_there() -> None:
    e = engine(rule("few", "count() < 2"))
    assert events(poll(e, T0, "bitso-hot", row("bitso-hot", available="1"))) == [("firing", "few")]
    [done] = poll(e, T0 + 1, "kuna-hot", row("kuna-hot", available=None, total="1"))
    assert (done.event, done.values["count()"]) == ("resolved", 2)


def test_alert_of_a_group_carries_the_group_its_value_and_the_rows_that_weigh_most() -> None:
    r = rule(
        "floor",
        "sum(available) < 100",
        ("asset",),
        selector=Selector(assets=["USDT"]),
        severity="critical",
        labels={"team": "treasury"},
        summary=Template("{asset}: {values}; most in {members} ({group})"),
    )
    e = engine(r)
    for account, exchange in EXCHANGES.items():
        e.register_account(account, exchange, T0)
    assert poll(e, T0, "bitso-hot", row("bitso-hot", available="30")) == []
    assert poll(e, T0, "kuna-hot", row("kuna-hot", available="20")) == []
    assert poll(e, T0, "coinw-spot", row("coinw-spot", available="5")) == []
    [alert] = poll(
        e,
        T0,
        "ems",
        row("ems", venue="BINANCESPOT", available="10"),
        row("ems", venue="KRAKEN", available="1"),
        row("ems", venue="KRAKEN", asset="BTC", available="1"),
    )
    doc = alert.to_json()
    assert doc["group"] == {"asset": "USDT"}
    assert (doc["account"], doc["exchange"], doc["venue"], doc["asset"]) == (
        None,
        None,
        None,
        "USDT",
    )
    assert doc["fingerprint"] == group_fingerprint("floor", {"asset": "USDT"})
    assert doc["labels"] == {"team": "treasury"}
    # the value, then the five rows that hold the most (a CoinAPI row names its venue)
    assert doc["values"] == {
        "sum(available)": "66",
        "USDT@bitso-hot": "30",
        "USDT@kuna-hot": "20",
        "USDT@ems/BINANCESPOT": "10",
        "USDT@coinw-spot": "5",
        "USDT@ems/KRAKEN": "1",
    }
    assert doc["summary"] == (
        "USDT: sum(available)=66; most in USDT@bitso-hot=30, USDT@kuna-hot=20, "
        "USDT@ems/BINANCESPOT=10, USDT@coinw-spot=5, USDT@ems/KRAKEN=1 (asset=USDT)"
    )


def test_the_firing_notification_json_of_a_group() -> None:
    e = engine(FLOOR)
    e.register_account("bitso-hot", "bitso", T0)
    e.register_account("kuna-hot", "kunacore", T0)
    assert poll(e, T0, "bitso-hot", row("bitso-hot", available="30")) == []
    [alert] = poll(e, T0 + 60, "kuna-hot", row("kuna-hot", available="20"))
    doc = json.loads(json.dumps(alert.to_json()))
    assert doc["version"] == 1
    assert doc["summary"] == "usdt-floor asset=USDT: sum(available)=50"
    assert doc["values"] == {"sum(available)": "50", "USDT@bitso-hot": "30", "USDT@kuna-hot": "20"}
    assert Alert.from_json(doc) == Alert.from_json(alert.to_json())
    assert Alert.from_json(doc).group == {"asset": "USDT"}


def test_min_lists_the_lowest_rows_and_only_a_few() -> None:
    e = engine(rule("lowest", "min(available) < 10", ()))
    accounts = ("bitso-hot", "kuna-hot", "coinw-spot")
    for account in accounts:
        e.register_account(account, EXCHANGES[account], T0)
    for i, account in enumerate(accounts):
        poll(e, T0, account, *(row(account, f"A{j}", available=str(i * 10 + j)) for j in range(3)))
    [state] = e.firing()
    members = [k for k in state.values if "@" in k]
    assert members == ["A0@bitso-hot", "A1@bitso-hot", "A2@bitso-hot", "A0@kuna-hot", "A1@kuna-hot"]
    assert state.values["min(available)"] == 0


def test_grouping_by_account_or_label_fills_what_the_group_has() -> None:
    labels = {"bitso-hot": {"desk": "payouts", "region": "mx"}}
    by_account = rule("acct", "sum(total) > 1", ("account",), labels={"team": "risk"})
    by_desk = rule("desk", "sum(total) > 1", ("desk",))
    e = engine(by_account, by_desk, account_labels=labels)
    alerts = poll(e, T0, "bitso-hot", row("bitso-hot", total="5"))
    got = {a.rule: a for a in alerts}
    assert (got["acct"].account, got["acct"].exchange, got["acct"].asset) == (
        "bitso-hot",
        "bitso",
        None,
    )
    assert got["acct"].labels == {"desk": "payouts", "region": "mx", "team": "risk"}
    assert (got["desk"].account, got["desk"].exchange) == (None, None)
    assert got["desk"].labels == {"desk": "payouts"}
    assert got["desk"].group == {"desk": "payouts"}


def test_fingerprints_are_stable_per_group_and_never_a_rows() -> None:
    a, b = engine(FLOOR), engine(FLOOR)
    for e in (a, b):
        poll(e, T0, "bitso-hot", row("bitso-hot", available="1"))
    assert [s.fingerprint for s in a.firing()] == [s.fingerprint for s in b.firing()]
    assert group_fingerprint("r", {"asset": "USDT", "venue": "x"}) == group_fingerprint(
        "r", {"venue": "x", "asset": "USDT"}
    )
    assert group_fingerprint("r", {"account": "a"}) != fingerprint("r", "a", None, None)


def test_for_and_repeat_keep_time_on_ticks_without_polls() -> None:
    e = engine(rule("floor", "sum(available) < 100", for_=120.0, repeat=600.0))
    assert poll(e, T0, "bitso-hot", row("bitso-hot", available="5")) == []
    assert e.tick(T0 + 119) == []
    assert events(e.tick(T0 + 120)) == [("firing", "floor")]
    assert e.tick(T0 + 719) == []
    assert events(e.tick(T0 + 720)) == [("repeat", "floor")]


def test_clear_is_the_recovery_condition_of_a_group() -> None:
    e = engine(rule("floor", "sum(available) < 100", clear="sum(available) >= 150"))
    poll(e, T0, "bitso-hot", row("bitso-hot", available="50"))
    assert e.firing()
    assert poll(e, T0 + 1, "bitso-hot", row("bitso-hot", available="120")) == []
    [done] = poll(e, T0 + 2, "bitso-hot", row("bitso-hot", available="150"))
    assert done.event == "resolved"
    assert done.values["sum(available)"] == 150


def test_a_groups_resolve_carries_the_text_it_fired_with_and_the_values_of_now() -> None:
    r = rule(
        "floor",
        "sum(available) < 100",
        summary=Template("{asset} across the wallets: {values}, most in {members}"),
        description=Template("top up {group}"),
    )
    e = engine(r)
    [fired] = poll(e, T0, "bitso-hot", row("bitso-hot", available="40"))
    [done] = poll(e, T0 + 60, "bitso-hot", row("bitso-hot", available="500"))
    assert done.event == "resolved"
    assert (done.summary, done.description) == (fired.summary, fired.description)
    assert fired.summary == "USDT across the wallets: sum(available)=40, most in USDT@bitso-hot=40"
    assert done.values == {"sum(available)": D(500), "USDT@bitso-hot": D(500)}


def test_resolved_summary_of_a_grouped_rule() -> None:
    r = rule(
        "floor",
        "sum(available) < 100",
        summary=Template("{asset} low: {values}"),
        resolved_summary=Template("{asset} back: {values} ({members})"),
    )
    e = engine(r)
    poll(e, T0, "bitso-hot", row("bitso-hot", available="40"))
    [done] = poll(e, T0 + 60, "bitso-hot", row("bitso-hot", available="500"))
    assert done.summary == "USDT back: sum(available)=500 (USDT@bitso-hot=500)"
    with pytest.raises(RuleError, match=re.escape("resolved_summary uses {available}")):
        rule("r", "sum(available) < 1", resolved_summary=Template("{available}"))


def test_a_groups_state_is_found_by_fingerprint_and_listed_as_firing() -> None:
    e = engine(FLOOR)
    [fired] = poll(e, T0, "bitso-hot", row("bitso-hot", available="40"))
    found = e.find(fired.fingerprint)
    assert found is not None and (found.group, found.phase) == ({"asset": "USDT"}, "firing")
    assert found.to_json()["group"] == {"asset": "USDT"}
    found.values.clear()  # a copy: the engine's state is untouched
    assert e.find(fired.fingerprint).values  # type: ignore[union-attr]
    # what is firing, as a document to retain again (the topic-layout move uses it)
    [again] = e.firing_alerts()
    assert (again.group, again.summary, again.account) == (fired.group, fired.summary, None)
    assert again.to_json()["group"] == {"asset": "USDT"}
    poll(e, T0 + 1, "bitso-hot", row("bitso-hot", available="500"))
    assert e.find(fired.fingerprint) is None


# --------------------------------------------------------------------------- no data


def test_a_failed_poll_in_the_group_neither_fires_nor_resolves() -> None:
    e = engine(FLOOR)
    e.register_account("bitso-hot", "bitso", T0)
    e.register_account("kuna-hot", "kunacore", T0)
    poll(e, T0, "bitso-hot", row("bitso-hot", available="70"))
    poll(e, T0, "kuna-hot", row("kuna-hot", available="60"))
    assert fail(e, T0 + 1, "kuna-hot") == []
    # would be 10 + 60 < 100, but kuna-hot's balance is not known now
    assert poll(e, T0 + 2, "bitso-hot", row("bitso-hot", available="10")) == []
    assert views(e)["asset=USDT"].reason == "kuna-hot: last poll failed"
    assert events(poll(e, T0 + 3, "kuna-hot", row("kuna-hot", available="60"))) == [
        ("firing", "usdt-floor")
    ]
    # and a firing alert does not resolve on a failed poll either
    fail(e, T0 + 4, "bitso-hot")
    assert poll(e, T0 + 5, "kuna-hot", row("kuna-hot", available="900")) == []
    assert e.firing()
    assert events(poll(e, T0 + 6, "bitso-hot", row("bitso-hot", available="10"))) == [
        ("resolved", "usdt-floor")
    ]


def test_an_account_not_polled_yet_keeps_its_groups_at_no_data() -> None:
    e = engine(FLOOR, rule("per-account", "sum(available) < 100", ("account",)))
    for account, exchange in EXCHANGES.items():
        e.register_account(account, exchange, T0)
    alerts = poll(e, T0, "bitso-hot", row("bitso-hot", available="10"))
    # its own account's group is known; the asset group waits for the three others
    assert [(a.rule, a.account) for a in alerts] == [("per-account", "bitso-hot")]
    assert views(e, "usdt-floor")["asset=USDT"].reason == "coinw-spot: not polled yet"
    for account in ("kuna-hot", "coinw-spot"):
        assert events(poll(e, T0, account, row(account, available="1"))) == [
            ("firing", "per-account")
        ]
    # the last account holds no USDT, yet until it answered the sum was not known
    assert events(poll(e, T0 + 1, "ems", row("ems", "BTC", available="1"))) == [
        ("firing", "usdt-floor"),
        ("firing", "per-account"),
    ]


def test_a_null_price_is_no_data_for_usd_but_count_still_counts() -> None:
    usd = rule("usd", "sum(usd(total)) < 1000")
    count = rule("count", "count() < 3")
    e = engine(usd, count)
    e.register_account("bitso-hot", "bitso", T0)
    e.register_account("kuna-hot", "kunacore", T0)
    assert poll(e, T0, "bitso-hot", row("bitso-hot", total="100", rate_usd="1")) == []
    alerts = poll(e, T0, "kuna-hot", row("kuna-hot", total="100", rate_usd=None))
    assert {a.rule for a in alerts} == {"count"}  # two rows there, both counted
    view = views(e, "usd")["asset=USDT"]
    assert view.result is None
    assert view.reason == "no value for USDT@kuna-hot"
    assert views(e, "count")["asset=USDT"].values == {"count()": D(2)}
    [fired] = poll(e, T0 + 1, "kuna-hot", row("kuna-hot", total="100", rate_usd="1"))
    assert (fired.rule, fired.values["sum(usd(total))"]) == ("usd", D(200))


def test_a_venue_missing_from_an_answer_is_no_data_not_a_drop() -> None:
    exposure = rule("exposure", "sum(total) > 50", ("venue",))
    drop = rule("drop", "sum(total) < 30", ("account",))
    e = engine(exposure, drop)
    poll(
        e,
        T0,
        "ems",
        row("ems", venue="BINANCESPOT", total="40"),
        row("ems", venue="KRAKEN", total="5"),
    )
    poll(e, T0, "kuna-hot", row("kuna-hot", venue="BINANCESPOT", total="40"))
    assert [s.group for s in e.firing()] == [{"venue": "BINANCESPOT"}]
    # the EMS answers without BINANCESPOT: the venue's sum would fall to 40, the account's to 5
    assert poll(e, T0 + 1, "ems", row("ems", venue="KRAKEN", total="5")) == []
    assert (
        views(e, "exposure")["venue=BINANCESPOT"].reason
        == "ems: venue BINANCESPOT missing from its answer"
    )
    assert views(e, "drop")["account=ems"].result is None
    assert views(e, "exposure")["venue=KRAKEN"].result is False  # other venues carry on
    # back, and lower for real
    alerts = poll(
        e,
        T0 + 2,
        "ems",
        row("ems", venue="BINANCESPOT", total="10"),
        row("ems", venue="KRAKEN", total="5"),
    )
    assert sorted(events(alerts)) == [("firing", "drop"), ("resolved", "exposure")]


def test_an_asset_leaving_an_answer_whose_venue_is_there_leaves_the_group() -> None:
    e = engine(FLOOR)
    poll(
        e, T0, "bitso-hot", row("bitso-hot", available="70"), row("bitso-hot", "BTC", available="1")
    )
    poll(e, T0, "kuna-hot", row("kuna-hot", available="60"))
    [fired] = poll(e, T0 + 1, "bitso-hot", row("bitso-hot", "BTC", available="1"))
    assert fired.values == {"sum(available)": D(60), "USDT@kuna-hot": D(60)}


def test_a_group_whose_rows_all_left_is_no_data() -> None:
    e = engine(rule("floor", "sum(available) < 100"))
    poll(
        e, T0, "bitso-hot", row("bitso-hot", available="10"), row("bitso-hot", "BTC", available="1")
    )
    assert len(e.firing()) == 2
    alerts = poll(e, T0 + 1, "bitso-hot", row("bitso-hot", "BTC", available="1000"))
    assert [(a.event, a.asset) for a in alerts] == [("resolved", "BTC")]
    assert [s.asset for s in e.firing()] == ["USDT"]  # no rows is not 0: it stays firing
    assert views(e)["asset=USDT"].reason == "no rows"


def test_an_account_removed_from_the_config_leaves_its_groups() -> None:
    per_account = rule("per-account", "sum(available) < 1000", ("account",))
    e = engine(FLOOR, per_account)
    poll(e, T0, "bitso-hot", row("bitso-hot", available="500"))
    poll(e, T0, "kuna-hot", row("kuna-hot", available="60"))
    assert [(s.rule, s.account) for s in e.firing()] == [
        ("per-account", "bitso-hot"),
        ("per-account", "kuna-hot"),
    ]
    # its own group has no rows left: its alert is closed, as a row's would be
    [closed] = e.forget_account("bitso-hot", T0 + 1)
    assert (closed.event, closed.group, closed.summary) == (
        "resolved",
        {"account": "bitso-hot"},
        "per-account account=bitso-hot: sum(available)=500 (closed, its accounts were removed from "
        "the config)",
    )
    # the asset group carries on without it
    [fired] = e.tick(T0 + 1)
    assert fired.values == {"sum(available)": D(60), "USDT@kuna-hot": D(60)}


# --------------------------------------------------------------------------- history


DROP = rule("drop", "pct_change(sum(total), 1h) <= -10", ("account",))


def test_history_per_group_and_window_functions_over_aggregates() -> None:
    e = engine(DROP)
    poll(e, T0, "bitso-hot", row("bitso-hot", total="600"), row("bitso-hot", "BTC", total="400"))
    poll(e, T0 + 1800, "bitso-hot", row("bitso-hot", total="1000"))
    # 50 minutes: the hour's window is not full, whatever the change
    assert poll(e, T0 + 3000, "bitso-hot", row("bitso-hot", total="850")) == []
    [fired] = poll(e, T0 + 3600, "bitso-hot", row("bitso-hot", total="850"))
    assert fired.rule == "drop"
    assert fired.values == {
        "sum(total)": D(850),
        "pct_change(sum(total), 1h)": D(-15),
        "USDT@bitso-hot": D(850),
    }


def test_extremes_of_a_groups_history() -> None:
    e = engine(
        rule(
            "day",
            "min_over(sum(available), 1d) < 50 and max_over(sum(available), 1d) > 100",
            ("account",),
        )
    )
    poll(e, T0, "kuna-hot", row("kuna-hot", available="120"))
    assert poll(e, T0 + 43200, "kuna-hot", row("kuna-hot", available="20")) == []  # not a day yet
    [fired] = poll(e, T0 + 86400, "kuna-hot", row("kuna-hot", available="30"))
    assert fired.values["min_over(sum(available), 1d)"] == 20
    assert fired.values["max_over(sum(available), 1d)"] == 120


def test_a_row_window_inside_an_aggregate() -> None:
    e = engine(rule("drain", "sum(delta(available, 1h)) < -50", ()))
    poll(e, T0, "bitso-hot", row("bitso-hot", available="100"))
    poll(e, T0, "kuna-hot", row("kuna-hot", available="100"))
    poll(e, T0 + 3600, "bitso-hot", row("bitso-hot", available="70"))
    [fired] = poll(e, T0 + 3600, "kuna-hot", row("kuna-hot", available="70"))
    assert fired.values["sum(delta(available, 1h))"] == -60


def test_group_samples_are_thinned_to_a_share_of_the_window() -> None:
    e = engine(DROP)
    for i in range(100):
        poll(e, T0 + i, "bitso-hot", row("bitso-hot", total=str(1000 + i)))
    series = list(e.history.keys())
    [key] = [k for k in series if k[0] == "#drop"]
    times = [t for t, _ in e.history.samples(key)]
    assert len(times) == 25  # at least 1h / 1024 = 3.5 s apart: every 4th one-second poll
    assert all(b - a >= 3600 / 1024 for a, b in itertools.pairwise(times))


async def test_group_history_and_alerts_resume_after_a_restart(tmp_path: Path) -> None:
    first = engine(DROP, FLOOR)
    first.register_account("bitso-hot", "bitso", T0)
    poll(first, T0, "bitso-hot", row("bitso-hot", total="1000", available="50"))
    assert [s.rule for s in first.firing()] == ["usdt-floor"]
    async with SqliteStateStore(tmp_path) as store:
        history = first.history.take_changes()
        await store.flush(StateSnapshot(first.states(), first.accounts(), history))

    now = T0 + 3600
    second = engine(DROP, FLOOR)
    async with SqliteStateStore(tmp_path) as store:
        saved = await store.load(now - second.history.retention)
    assert saved.restore(second, now) == []
    assert [s.group for s in second.firing()] == [{"asset": "USDT"}]
    # the account is not polled yet in this run: nothing resolves, nothing fires
    assert second.tick(now) == []
    alerts = poll(second, now, "bitso-hot", row("bitso-hot", total="850", available="500"))
    # the hour-old sum comes from the stored history: -15 %
    assert sorted(events(alerts)) == [("firing", "drop"), ("resolved", "usdt-floor")]
    [drop] = [a for a in alerts if a.rule == "drop"]
    assert drop.values["pct_change(sum(total), 1h)"] == D(-15)


# --------------------------------------------------------------------------- reloads


def test_a_reload_keeps_group_states_of_unchanged_rules_and_closes_the_others() -> None:
    keep = rule("keep", "sum(available) < 100")
    change = rule("change", "sum(available) < 100")
    regroup = rule("regroup", "sum(available) < 100")
    e = engine(keep, change, regroup, FLOOR)
    poll(e, T0, "bitso-hot", row("bitso-hot", available="10"))
    assert len(e.firing()) == 4
    closed = e.replace_rules(
        [
            rule("keep", "sum(available) < 100", severity="critical"),
            rule("change", "sum(available) < 99"),
            rule("regroup", "sum(available) < 100", ("venue",)),
        ],
        T0 + 1,
    )
    assert sorted((a.rule, a.summary) for a in closed) == [
        ("change", "change asset=USDT: sum(available)=10 (closed, rule condition changed)"),
        ("regroup", "regroup asset=USDT: sum(available)=10 (closed, rule group_by changed)"),
        (
            "usdt-floor",
            "usdt-floor asset=USDT: sum(available)=10 (closed, rule removed)",
        ),
    ]
    assert all(a.group == {"asset": "USDT"} and a.event == "resolved" for a in closed)
    [kept] = e.firing()
    assert kept.rule == "keep"
    assert kept.severity == "warning"  # a firing alert keeps the routing it fired with
    # the rebuilt groups carry on from the rows already known: the new ones fire now
    assert sorted(events(e.tick(T0 + 2))) == [("firing", "change"), ("firing", "regroup")]


def test_a_row_rule_that_becomes_grouped_closes_its_alerts() -> None:
    e = engine(Rule(name="low", when=parse_expression("available < 100")))
    e.observe("bitso-hot", "bitso", [row("bitso-hot", available="10")], T0)
    [closed] = e.replace_rules([rule("low", "sum(available) < 100")], T0 + 1)
    assert (closed.event, closed.account, closed.summary) == (
        "resolved",
        "bitso-hot",
        "low bitso-hot bitso/USDT: available=10 (closed, rule condition changed)",
    )


# --------------------------------------------------------------------------- rule checks


@pytest.mark.parametrize(
    ("kw", "key", "offset", "fragment"),
    [
        ({"when": "total < 1 or count() > 2"}, "when", 13, "count() is an aggregate over a group"),
        (
            {"group_by": ("asset",), "when": "sum(total) < available"},
            "when",
            13,
            "available is read outside",
        ),
        (
            {"group_by": ("asset",), "when": "sum(total) < 1 and age > 5m"},
            "when",
            19,
            "age and failures belong",
        ),
        (
            {"group_by": ("asset",), "when": "sum(total) < 1", "clear": "total > 2"},
            "clear",
            0,
            "total is read",
        ),
        ({"group_by": ("asset", "asset"), "when": "sum(total) < 1"}, "group_by", None, "twice"),
        (
            {"group_by": ("asset",), "when": "sum(total) < 1", "summary": Template("{total}")},
            "summary",
            None,
            "{total}",
        ),
        (
            {"group_by": ("asset",), "when": "sum(total) < 1", "summary": Template("{venue}")},
            "summary",
            None,
            "venue is not in group_by",
        ),
        (
            {"when": "total < 1", "summary": Template("{members}")},
            "summary",
            None,
            "only rules with group_by",
        ),
    ],
)
def test_rule_checks_point_at_the_mistake(
    kw: dict[str, Any], key: str, offset: int | None, fragment: str
) -> None:
    exprs = {k: parse_expression(v) for k, v in kw.items() if k in ("when", "clear")}
    with pytest.raises(RuleError) as caught:
        Rule(name="r", **{**kw, **exprs})
    assert (caught.value.key, caught.value.offset) == (key, offset)
    assert fragment in caught.value.message


def test_summary_fields_a_group_has() -> None:
    Rule(
        name="r",
        when=parse_expression("sum(total) > 1"),
        group_by=("account",),
        summary=Template("{account} on {exchange}: {values} {members} {group} {rule} {severity}"),
    )


# --------------------------------------------------------------------------- incremental


_ACCOUNTS = ("bitso-hot", "kuna-hot", "ems")
_ASSETS = ("USDT", "BTC", "MXN")
_VENUES = {"bitso-hot": ("bitso",), "kuna-hot": ("kunacore",), "ems": ("BINANCESPOT", "KRAKEN")}
_amount = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False),
    st.sampled_from([D("1E-30"), D("1E+35"), D("0"), D("123456789012345678901234567890.12345")]),
)
_answer = st.dictionaries(
    st.tuples(st.sampled_from(_ASSETS), st.sampled_from([0, 1])),
    st.tuples(_amount, _amount),
    max_size=6,
)
_step = st.tuples(st.sampled_from(_ACCOUNTS), st.one_of(st.just("fail"), _answer))
INCREMENTAL_RULES = [
    rule(
        "by-asset",
        "sum(available) > 0 and min(total) > 0 and max(total) > 0 and avg(available) > 0 "
        "and count() > 0",
    ),
    rule("by-asset-too", "max(usd(total)) > 0 and sum(available) > 0"),  # shares by-asset's
    rule("by-venue", "sum(usd(total)) > 0 and min(available - total) < 0", ("venue",)),
    rule("by-account", "max(available) > 0 and sum(total * 2) > 0", ("account",)),
    rule("all", "avg(total) > 0 and min(available) > 0", ()),
]
Answer = dict[tuple[str, int], tuple[D | None, D | None]]


def _rows(account: str, answer: Answer) -> list[Balance]:
    venues = _VENUES[account]
    return [
        Balance(
            account,
            EXCHANGES[account],
            venues[index % len(venues)],
            asset,
            asset,
            total=total,
            available=available,
            rate_usd=D("1.5"),
        )
        for (asset, index), (available, total) in answer.items()
    ]


def _aggregates(e: Engine) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every group's rows, values and listed members (what the incremental upkeep feeds)."""
    return {
        (g.rule, json.dumps(g.group, sort_keys=True)): (g.rows, dict(g.values), dict(g.members))
        for g in e.groups.views(T0)
        if g.rows  # a group without rows is kept only for its alert's sake
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, min_size=1, max_size=25))
def test_incremental_updates_equal_a_full_recomputation(steps: list[tuple[str, Any]]) -> None:
    """After any sequence of polls, failed polls and rows that come and go, every group's
    rows, values and listed members equal those of an engine fed only the last answers."""
    live = engine(*INCREMENTAL_RULES)
    last: dict[str, Answer] = {}
    for i, (account, answer) in enumerate(steps):
        if answer == "fail":
            live.poll_failed(account, EXCHANGES[account], T0 + i)
        else:
            live.observe(account, EXCHANGES[account], _rows(account, answer), T0 + i)
            last[account] = answer
        live.tick(T0 + i)
    fresh = engine(*INCREMENTAL_RULES)
    for account, answer in last.items():
        fresh.observe(account, EXCHANGES[account], _rows(account, answer), T0)
    assert _aggregates(live) == _aggregates(fresh)


def test_rules_with_the_same_select_and_group_by_share_their_groups() -> None:
    warn = rule("warn", "sum(available) < 100", severity="warning")
    crit = rule("crit", "min(available) < 10 and sum(available) < 50", severity="critical")
    e = engine(warn, crit)
    assert len({id(p.partition) for p in e.groups._portfolios.values()}) == 1
    assert poll(e, T0, "bitso-hot", row("bitso-hot", available="160")) == []
    assert events(poll(e, T0 + 1, "bitso-hot", row("bitso-hot", available="40"))) == [
        ("firing", "warn")
    ]
    alerts = poll(e, T0 + 2, "bitso-hot", row("bitso-hot", available="5"))
    assert [(a.rule, a.values) for a in alerts] == [
        ("crit", {"min(available)": D(5), "sum(available)": D(5), "USDT@bitso-hot": D(5)})
    ]


def test_eval_shows_each_group_with_its_values_rows_and_why_it_is_no_data() -> None:
    from balwatch.explain import Poll, explain

    usd = rule("exposure", "sum(usd(total)) > 100", ("venue",), for_=60.0)
    e = engine(usd)
    polls = [
        Poll("ems", "coinapi", [row("ems", venue="KRAKEN", total="200", rate_usd="1")]),
        Poll("bitso-hot", "bitso", [row("bitso-hot", total="5", rate_usd=None)]),
        Poll("kuna-hot", "kunacore", None),
    ]
    # kuna-hot answered before, so its failed poll keeps only its own venue at no data
    e.observe("kuna-hot", "kunacore", [row("kuna-hot", total="1", rate_usd="1")], T0 - 30)
    for p in polls:
        if p.rows is None:
            e.poll_failed(p.account, p.exchange, T0)
        else:
            e.observe(p.account, p.exchange, list(p.rows), T0)
    alerts = e.tick(T0)
    lines = explain([usd], polls, alerts, e.pending(), e.groups.views(T0)).splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["exposure", "venue=KRAKEN", "1", "row", "true", "sum(usd(total))=200;", "rows:",
         "USDT@ems/KRAKEN=200", "would", "be", "pending", "(fires", "after", "1m)"],
        ["exposure", "venue=bitso", "1", "row", "no", "data", "(no", "value", "for",
         "USDT@bitso-hot)"],
        ["exposure", "venue=kunacore", "1", "row", "no", "data", "(kuna-hot:", "last", "poll",
         "failed)", "sum(usd(total))=1;", "rows:", "USDT@kuna-hot=1"],
    ]  # fmt: skip
