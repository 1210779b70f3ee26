"""Engine lifecycle: pending/for, hysteresis, repeat, resolve, no data, flapping, windows,
account scope, failed polls, disappearing rows, restore, hot reload. Fake clocks only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from balwatch.alert import Alert, fingerprint
from balwatch.model import Balance
from balwatch.rules.engine import AccountState, AlertState, Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.rules.select import Exclude, Selector
from balwatch.rules.template import Template

D = Decimal
T0 = 1_800_000_000.0  # a unix timestamp: 2027-01-15T08:00:00Z
ACCT, EXCH = "bitso-treasury", "bitso"


def rule(name: str, when: str, *, clear: str | None = None, **kw: Any) -> Rule:
    return Rule(
        name=name,
        when=parse_expression(when),
        clear=None if clear is None else parse_expression(clear),
        **kw,
    )


def row(
    asset: str = "USDT", venue: str = EXCH, account: str = ACCT, **metrics: str | None
) -> Balance:
    values = {k: None if v is None else D(v) for k, v in metrics.items()}
    return Balance(account, EXCH, venue, asset, asset.lower(), **values)  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(*rules: Rule, **kw: Any) -> Engine:
    kw.setdefault("clock", Clock())
    return Engine(rules, **kw)


def poll(e: Engine, t: float, *rows: Balance, account: str = ACCT) -> list[Alert]:
    return e.observe(account, EXCH, list(rows), t)


def events(alerts: Sequence[Alert]) -> list[tuple[str, str]]:
    return [(a.event, a.rule) for a in alerts]


def wall(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


LOW = rule("low-available", "available < 5000")


# --------------------------------------------------------------------------- basic lifecycle


def test_for_zero_fires_at_once_and_resolves_when_false() -> None:
    e = engine(LOW)
    assert poll(e, T0, row(available="9000")) == []
    [fired] = poll(e, T0 + 30, row(available="4210.55"))
    assert (fired.event, fired.status, fired.rule) == ("firing", "firing", "low-available")
    assert (fired.account, fired.exchange, fired.venue, fired.asset) == (ACCT, EXCH, EXCH, "USDT")
    assert fired.values == {"available": D("4210.55")}
    assert fired.started_at == fired.observed_at == wall(T0 + 30)
    assert fired.fingerprint == fingerprint("low-available", ACCT, EXCH, "USDT")
    assert poll(e, T0 + 60, row(available="4000")) == []  # still firing: no re-notification
    [resolved] = poll(e, T0 + 90, row(available="5000"))
    assert (resolved.event, resolved.status) == ("resolved", "resolved")
    assert resolved.fingerprint == fired.fingerprint and resolved.id != fired.id
    assert resolved.started_at == wall(T0 + 30)
    assert resolved.resolved_at == resolved.observed_at == wall(T0 + 90)
    assert e.states() == []


def test_for_holds_in_pending_then_fires_with_started_at_at_the_first_true() -> None:
    e = engine(rule("low", "available < 5000", for_=120))
    assert poll(e, T0, row(available="100")) == []
    [pending] = e.pending()
    assert (pending.phase, pending.since, pending.last_notified) == ("pending", T0, None)
    assert e.firing() == []
    assert poll(e, T0 + 60, row(available="100")) == []
    assert poll(e, T0 + 119.9, row(available="100")) == []
    [fired] = poll(e, T0 + 120, row(available="100"))
    assert fired.event == "firing"
    assert fired.started_at == wall(T0) and fired.observed_at == wall(T0 + 120)
    assert [s.phase for s in e.firing()] == ["firing"] and e.pending() == []


def test_pending_that_turns_false_is_cancelled_silently_and_restarts() -> None:
    e = engine(rule("low", "available < 5000", for_=120))
    poll(e, T0, row(available="100"))
    assert poll(e, T0 + 100, row(available="9000")) == []
    assert e.states() == []
    poll(e, T0 + 130, row(available="100"))  # a new pending: the timer starts again
    assert poll(e, T0 + 240, row(available="100")) == []
    assert events(poll(e, T0 + 250, row(available="100"))) == [("firing", "low")]


def test_hysteresis_with_clear() -> None:
    e = engine(rule("low", "available < 5000", clear="available >= 6000"))
    assert events(poll(e, T0, row(available="4000"))) == [("firing", "low")]
    assert poll(e, T0 + 30, row(available="5500")) == []  # when false, clear false: band
    assert poll(e, T0 + 60, row(available="4500")) == []  # back below: no second firing
    assert poll(e, T0 + 90, row(available="5999.99")) == []
    [resolved] = poll(e, T0 + 120, row(available="6000"))
    assert resolved.event == "resolved"
    assert resolved.values == {"available": D("6000")}
    assert resolved.expression == "available < 5000"


def test_clear_that_overlaps_when_never_resolves_while_when_holds() -> None:
    e = engine(rule("low", "available < 5000", clear="available >= 1000"))
    poll(e, T0, row(available="4000"))
    assert poll(e, T0 + 30, row(available="3000")) == []  # clear true, when true: still firing
    assert events(poll(e, T0 + 60, row(available="5000"))) == [("resolved", "low")]


def test_clear_reading_other_metrics_and_resolved_values() -> None:
    e = engine(
        rule("wd", "pending_withdrawal > 100", clear="pending_withdrawal < 10 and total > 0")
    )
    poll(e, T0, row(pending_withdrawal="500", total="1000"))
    assert poll(e, T0 + 30, row(pending_withdrawal="50", total="1000")) == []
    assert poll(e, T0 + 60, row(pending_withdrawal="5", total=None)) == []  # clear: no data
    [resolved] = poll(e, T0 + 90, row(pending_withdrawal="5", total="900"))
    assert resolved.values == {"pending_withdrawal": D(5), "total": D(900)}


def test_repeat_while_firing() -> None:
    e = engine(rule("low", "available < 5000", repeat=3600, for_=60))
    got = []
    for i in range(0, 8000, 600):
        got += [(a.event, i) for a in poll(e, T0 + i, row(available="1"))]
    assert got == [("firing", 600), ("repeat", 4200), ("repeat", 7800)]
    [repeat] = poll(e, T0 + 11400, row(available="2"))
    assert repeat.status == "firing" and repeat.values == {"available": D(2)}
    assert repeat.started_at == wall(T0)
    assert events(poll(e, T0 + 11401, row(available="9000"))) == [("resolved", "low")]


def test_repeat_in_the_hysteresis_band() -> None:
    e = engine(rule("low", "available < 5000", clear="available > 6000", repeat=60))
    poll(e, T0, row(available="1"))
    assert events(poll(e, T0 + 60, row(available="5500"))) == [("repeat", "low")]


# --------------------------------------------------------------------------- no data


def test_no_data_neither_fires_nor_resolves_and_keeps_timers() -> None:
    e = engine(rule("low", "available < 5000", for_=60, repeat=100))
    assert poll(e, T0, row(available=None)) == []  # inactive + no data: nothing
    assert e.states() == []
    poll(e, T0 + 10, row(available="1"))  # pending since T0 + 10
    assert poll(e, T0 + 30, row(available=None)) == []
    [state] = e.pending()
    assert state.since == T0 + 10  # the timer is kept across no data
    assert events(poll(e, T0 + 70, row(available="1"))) == [("firing", "low")]
    for t in (T0 + 200, T0 + 500):  # firing + no data: no resolve and no repeat
        assert poll(e, t, row(available=None)) == []
    assert [s.phase for s in e.states()] == ["firing"]
    assert events(poll(e, T0 + 600, row(available="1"))) == [("repeat", "low")]


def test_usd_without_a_rate_is_no_data() -> None:
    e = engine(rule("small", "usd(total) < 100"))
    assert poll(e, T0, row(total="1")) == []
    assert events(poll(e, T0 + 1, row(total="1", rate_usd="2"))) == [("firing", "small")]
    assert poll(e, T0 + 2, row(total="1000")) == []  # rate gone again: stays firing
    assert len(e.firing()) == 1


# --------------------------------------------------------------------------- flapping


def test_pending_absorbs_flaps_shorter_than_for() -> None:
    e = engine(rule("low", "available < 5000", for_=120))
    got = []
    for i in range(40):  # 20 minutes of flapping every 30 s
        got += poll(e, T0 + 30 * i, row(available="4000" if i % 2 else "6000"))
    assert got == []


def test_flapping_without_for_or_clear_notifies_each_crossing_and_no_more() -> None:
    e = engine(LOW)
    got = []
    for i in range(11):
        got += poll(e, T0 + 30 * i, row(available="4000" if i % 2 else "6000"))
    assert [a.event for a in got] == ["firing", "resolved"] * 5  # one per transition


def test_flapping_inside_the_clear_band_is_one_alert() -> None:
    e = engine(rule("low", "available < 5000", clear="available >= 6000"))
    got = []
    for i in range(20):
        got += poll(e, T0 + 30 * i, row(available="4900" if i % 2 else "5100"))
    assert [a.event for a in got] == ["firing"]


# --------------------------------------------------------------------------- windows


def test_pct_change_with_irregular_samples_fires_on_a_sudden_drop_not_on_drift() -> None:
    e = engine(rule("drop", "pct_change(total, 15m) <= -20"))
    # Irregular polls: gaps of 20 s to 4 min; the total drifts down 1% per poll.
    gaps = [20, 45, 240, 60, 33, 180, 90, 21, 200, 75] * 3
    t, total, got = T0, D(100000), []
    for gap in gaps:
        got += poll(e, t, row(total=str(total)))
        t += gap
        total = total * D("0.99")
    assert got == []  # at most ~7 polls per window: about -7%, never -20%
    # Window not full after a new series starts: no data, even for a big change.
    e2 = engine(rule("drop", "pct_change(total, 15m) <= -20"))
    poll(e2, T0, row(total="100"))
    assert poll(e2, T0 + 600, row(total="10")) == []
    # A sudden drop: -25% against the value 15m+ ago fires.
    fired = poll(e2, T0 + 901, row(total="75"))
    assert events(fired) == [("firing", "drop")]
    assert fired[0].values == {"pct_change(total, 15m)": D(-25), "total": D(75)}


def test_drop_during_a_polling_gap_is_reported() -> None:
    e = engine(rule("drop", "pct_change(total, 15m) <= -20"))
    poll(e, T0, row(total="1000"))
    poll(e, T0 + 60, row(total="1000"))
    for i in range(1, 5):  # polls failing for an hour
        assert e.poll_failed(ACCT, EXCH, T0 + 60 + 900 * i) == []
    assert events(poll(e, T0 + 3700, row(total="700"))) == [("firing", "drop")]


def test_history_is_recorded_only_for_window_metrics_and_retention_follows_rules() -> None:
    e = engine(rule("drop", "delta(total, 1h) < -5"), LOW)
    poll(e, T0, row(total="10", available="1"))
    assert list(e.history.keys()) == [(ACCT, EXCH, "USDT", "total")]
    assert e.history.retention == pytest.approx(3600 + 60)
    e.replace_rules([LOW], T0 + 1)
    assert list(e.history.keys()) == []  # no rule reads history any more
    assert e.history.retention == pytest.approx(60)


# --------------------------------------------------------------------------- account scope


def test_stale_account_by_tick_and_recovery_by_a_good_poll() -> None:
    e = engine(rule("stale", "age > 5m"))
    e.register_account(ACCT, EXCH, T0)
    assert e.tick(T0 + 300) == []  # age == 5m is not > 5m
    [fired] = e.tick(T0 + 301)
    assert (fired.event, fired.venue, fired.asset) == ("firing", None, None)
    assert fired.to_json()["asset"] is None
    assert fired.values == {"age": D(301)}
    assert fired.fingerprint == fingerprint("stale", ACCT, None, None)
    assert e.tick(T0 + 400) == []
    [resolved] = poll(e, T0 + 450)  # an empty good poll still proves the account alive
    assert resolved.event == "resolved" and resolved.values == {"age": D(0)}
    assert e.tick(T0 + 700) == []
    assert events(e.tick(T0 + 751)) == [("firing", "stale")]


def test_account_first_seen_through_a_failed_poll_goes_stale_too() -> None:
    e = engine(rule("stale", "age > 5m"))
    e.poll_failed(ACCT, EXCH, T0)
    assert events(e.tick(T0 + 301)) == [("firing", "stale")]


def test_failures_count_failed_polls_and_reset_on_success() -> None:
    e = engine(rule("failing", "failures >= 3", repeat=60))
    assert e.poll_failed(ACCT, EXCH, T0) == []
    assert e.poll_failed(ACCT, EXCH, T0 + 10) == []
    [fired] = e.poll_failed(ACCT, EXCH, T0 + 20)
    assert fired.values == {"failures": D(3)}
    assert events(e.tick(T0 + 80)) == [("repeat", "failing")]  # ticks repeat account alerts
    assert events(poll(e, T0 + 90)) == [("resolved", "failing")]


def test_a_failed_poll_never_evaluates_balance_rules() -> None:
    e = engine(LOW, rule("zero", "total == 0"))
    for i in range(5):
        assert e.poll_failed(ACCT, EXCH, T0 + i) == []
    assert e.tick(T0 + 10) == []
    assert e.states() == []
    poll(e, T0 + 20, row(available="1", total="5"))
    assert e.poll_failed(ACCT, EXCH, T0 + 30) == []  # and never resolves one either
    assert [s.rule for s in e.firing()] == ["low-available"]


def test_account_rules_follow_the_account_part_of_the_selector() -> None:
    e = engine(
        rule("stale", "age > 1m", selector=Selector(accounts=["bitso-*"], assets=["NONE"])),
        rule("stale-x", "age > 1m", selector=Selector(exclude=Exclude(exchanges=[EXCH]))),
    )
    e.register_account(ACCT, EXCH, T0)
    e.register_account("kuna-1", "kunacore", T0)
    got = [(a.rule, a.account) for a in e.tick(T0 + 61)]
    assert got == [("stale", ACCT), ("stale-x", "kuna-1")]


def test_row_rule_may_read_age_and_failures() -> None:
    e = engine(rule("low-live", "available < 5 and failures == 0 and age < 1m"))
    assert events(poll(e, T0, row(available="1"))) == [("firing", "low-live")]


def test_clock_is_used_when_now_is_omitted() -> None:
    clock = Clock(T0)
    e = engine(rule("stale", "age > 5m"), LOW, clock=clock)
    e.register_account(ACCT, EXCH)
    clock.t = T0 + 301
    assert events(e.tick()) == [("firing", "stale")]
    clock.t = T0 + 302
    assert events(e.observe(ACCT, EXCH, [row(available="1")])) == [
        ("firing", "low-available"),
        ("resolved", "stale"),
    ]
    assert e.poll_failed(ACCT, EXCH) == []


# --------------------------------------------------------------------------- rows


def test_disappearing_asset_is_no_data_and_its_history_is_dropped() -> None:
    e = engine(LOW, rule("drop", "delta(total, 10m) < -5"))
    poll(e, T0, row("USDT", available="1", total="100"), row("BTC", available="9999", total="1"))
    assert (ACCT, EXCH, "USDT", "total") in e.history
    assert poll(e, T0 + 30, row("BTC", available="9999", total="1")) == []  # USDT gone
    assert [s.asset for s in e.firing()] == ["USDT"]  # not resolved
    assert (ACCT, EXCH, "USDT", "total") not in e.history
    # It comes back: evaluated again; the window starts empty (no stale comparison).
    [resolved] = poll(e, T0 + 60, row("USDT", available="7000", total="1"))
    assert (resolved.event, resolved.asset) == ("resolved", "USDT")
    assert e.states() == []


def test_rows_are_separate_fingerprints_and_venues_count() -> None:
    e = engine(LOW)
    got = poll(
        e,
        T0,
        row("USDT", venue="BINANCE", available="1"),
        row("USDT", venue="KRAKEN", available="1"),
        row("BTC", venue="KRAKEN", available="1"),
    )
    assert [(a.venue, a.asset) for a in got] == [
        ("BINANCE", "USDT"),
        ("KRAKEN", "USDT"),
        ("KRAKEN", "BTC"),
    ]
    assert len({a.fingerprint for a in got}) == 3


def test_selector_limits_rows() -> None:
    e = engine(
        rule("usdt", "available < 5", selector=Selector(assets=["USD*"], accounts=["bitso-*"]))
    )
    got = poll(e, T0, row("USDT", available="1"), row("BTC", available="1"))
    assert [a.asset for a in got] == ["USDT"]
    assert poll(e, T0, row("USDT", account="other", available="1"), account="other") == []


# --------------------------------------------------------------------------- content


def test_alert_content_templates_labels_notify_and_json() -> None:
    low = rule(
        "low-available",
        "available < 5000",
        severity="critical",
        description="Hot wallet running low",
        summary=Template("{account} {asset}: only {available} available ({values}) {hold}"),
        labels={"team": "treasury", "desk": "rule-wins"},
        notify=("ops-mqtt",),
    )
    e = engine(low, account_labels={ACCT: {"desk": "treasury", "region": "mx"}})
    [fired] = poll(e, T0, row(available="4210.55"))
    assert fired.summary == ("bitso-treasury USDT: only 4210.55 available (available=4210.55) n/a")
    assert fired.description == "Hot wallet running low"
    assert fired.labels == {"desk": "rule-wins", "region": "mx", "team": "treasury"}
    assert fired.notify == ("ops-mqtt",)
    doc = fired.to_json()
    assert doc == {
        "version": 1,
        "id": fired.id,
        "fingerprint": fired.fingerprint,
        "status": "firing",
        "event": "firing",
        "rule": "low-available",
        "severity": "critical",
        "account": ACCT,
        "exchange": EXCH,
        "venue": EXCH,
        "asset": "USDT",
        "summary": fired.summary,
        "description": "Hot wallet running low",
        "labels": {"team": "treasury", "desk": "rule-wins", "region": "mx"},
        "expression": "available < 5000",
        "values": {"available": "4210.55"},
        "started_at": "2027-01-15T08:00:00Z",
        "resolved_at": None,
        "observed_at": "2027-01-15T08:00:00Z",
        "instance": "",  # the daemon places the alert (balwatch.alert.placed)
        "url": None,
        "group": None,  # a row's alert; a group's has its keys (tests/rules/test_groups.py)
    }
    assert Alert.from_json(json.loads(json.dumps(doc)), notify=("ops-mqtt",)) == fired


def test_description_template_and_default_summary() -> None:
    stale = rule(
        "stale",
        "age > 5m",
        description_template=Template(
            "{account} on {exchange}: silent for {age}, {failures} failures"
        ),
    )
    e = engine(stale, LOW)
    e.register_account(ACCT, EXCH, T0)
    e.poll_failed(ACCT, EXCH, T0 + 1)
    [fired] = e.tick(T0 + 3725)
    assert fired.description == "bitso-treasury on bitso: silent for 1h2m5s, 1 failures"
    assert fired.summary == "stale bitso-treasury: age=3725"
    low, stale_resolved = poll(e, T0 + 3730, row(available="1"))
    # The resolve says what was seen; the values say how it ended.
    assert stale_resolved.summary == "stale bitso-treasury: age=3725"
    assert stale_resolved.description == fired.description
    assert stale_resolved.values == {"age": D(0)}
    assert low.summary == "low-available bitso-treasury bitso/USDT: available=1"


SHOWN = rule(
    "low-available",
    "available < 5000",
    clear="available >= 6000",
    repeat=3600,
    summary=Template("{account} {asset}: only {available} available"),
    description_template=Template("{available} of {total} usable"),
)


def test_a_resolve_carries_the_text_it_fired_with_and_the_values_it_ended_with() -> None:
    e = engine(SHOWN)
    [fired] = poll(e, T0, row(available="3000", total="4000"))
    [repeat] = poll(e, T0 + 3600, row(available="2000", total="4000"))
    assert repeat.summary == "bitso-treasury USDT: only 2000 available"  # the news of now
    [resolved] = poll(e, T0 + 3660, row(available="7000", total="8000"))
    assert resolved.summary == fired.summary == "bitso-treasury USDT: only 3000 available"
    assert resolved.description == fired.description == "3000 of 4000 usable"
    assert resolved.values == {"available": D(7000)}


def test_resolved_summary_is_rendered_at_the_resolve() -> None:
    e = engine(rule(SHOWN.name, "available < 5000", resolved_summary=Template("back: {available}")))
    poll(e, T0, row(available="3000"))
    [resolved] = poll(e, T0 + 60, row(available="7000"))
    assert resolved.summary == "back: 7000"


def test_the_text_it_fired_with_survives_a_restart() -> None:
    e = engine(SHOWN)
    poll(e, T0, row(available="3000", total="4000"))
    states, accts = roundtrip(e)
    e2 = engine(SHOWN)
    e2.restore(states, accts, T0 + 10)
    [resolved] = poll(e2, T0 + 20, row(available="7000", total="8000"))
    assert (resolved.summary, resolved.description) == (
        "bitso-treasury USDT: only 3000 available",
        "3000 of 4000 usable",
    )


def test_a_state_saved_without_its_text_loads_and_resolves_as_before() -> None:
    """States written before balwatch kept the text: the resolve renders it anew."""
    e = engine(SHOWN)
    poll(e, T0, row(available="3000", total="4000"))
    [saved] = e.states()
    doc = saved.to_json()
    del doc["summary"], doc["description"]
    old = AlertState.from_json(json.loads(json.dumps(doc)))
    assert (old.summary, old.description) == (None, None)
    e2 = engine(SHOWN)
    e2.restore([old], [], T0 + 10)
    [moved] = e2.firing_alerts()
    assert moved.summary == "low-available bitso-treasury bitso/USDT: available=3000"
    [resolved] = poll(e2, T0 + 20, row(available="7000", total="8000"))
    assert resolved.summary == "bitso-treasury USDT: only 7000 available"


def test_a_closed_alert_shows_what_was_seen_and_why_it_closed() -> None:
    e = engine(SHOWN)
    poll(e, T0, row(available="3000", total="4000"))
    [closed] = e.replace_rules([], T0 + 1)
    assert closed.summary == "bitso-treasury USDT: only 3000 available (closed, rule removed)"
    assert closed.description == "3000 of 4000 usable"


def test_firing_alerts_and_find_show_the_state_without_changing_it() -> None:
    e = engine(SHOWN, rule("slow", "total < 1", for_=7200))
    [fired] = poll(e, T0, row(available="3000", total="0.5"))
    [repeat] = poll(e, T0 + 3600, row(available="2000", total="0.5"))
    [now] = e.firing_alerts()
    assert (now.event, now.fingerprint, now.summary, now.description) == (
        "firing",
        fired.fingerprint,
        fired.summary,
        fired.description,
    )
    assert now.id not in (fired.id, repeat.id)
    assert (now.values, now.started_at, now.observed_at) == (
        repeat.values,
        wall(T0),
        wall(T0 + 3600),
    )
    found = e.find(fired.fingerprint)
    assert found is not None and (found.phase, found.summary) == ("firing", fired.summary)
    pending = fingerprint("slow", ACCT, EXCH, "USDT")
    assert e.find(pending) is not None and e.find(pending) == e.pending()[0]
    assert e.find("0" * 16) is None
    assert poll(e, T0 + 3601, row(available="2000", total="0.5")) == []  # nothing moved


def test_duplicate_rule_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate rule name 'low-available'"):
        engine(LOW, rule("low-available", "total < 1"))


# --------------------------------------------------------------------------- restore


def roundtrip(e: Engine) -> tuple[list[AlertState], list[AccountState]]:
    """Export as a store would: through JSON."""
    states = [AlertState.from_json(json.loads(json.dumps(s.to_json()))) for s in e.states()]
    accts = [AccountState.from_json(json.loads(json.dumps(a.to_json()))) for a in e.accounts()]
    return states, accts


def test_saved_states_come_back_equal() -> None:
    """Every field survives the JSON a store keeps: a field left out would reset on restart."""
    e = engine(rule("low", "available < 5000", labels={"team": "ops"}, notify=("ops-mqtt",)))
    poll(e, T0, row(available="1.50"))
    states, accts = roundtrip(e)
    assert states == e.states() and states[0].labels == {"team": "ops"}
    assert accts == e.accounts()


def test_restore_neither_refires_nor_forgets_to_resolve() -> None:
    rules = (rule("low", "available < 5000", repeat=3600), rule("slow", "total < 1", for_=600))
    e = engine(*rules)
    [fired] = poll(e, T0, row(available="1", total="0.5"))
    states, accts = roundtrip(e)
    assert {s.rule: s.phase for s in states} == {"low": "firing", "slow": "pending"}

    e2 = engine(*rules)
    assert e2.restore(states, accts, T0 + 10) == []
    assert sorted(s.fingerprint for s in e2.states()) == sorted(s.fingerprint for s in states)
    assert poll(e2, T0 + 30, row(available="1", total="0.5")) == []  # no duplicate firing
    assert events(poll(e2, T0 + 600, row(available="1", total="0.5"))) == [("firing", "slow")]
    assert events(poll(e2, T0 + 3600, row(available="1", total="0.5"))) == [("repeat", "low")]
    [resolved] = poll(e2, T0 + 3630, row(available="9000", total="0.5"))
    assert (resolved.event, resolved.fingerprint) == ("resolved", fired.fingerprint)
    assert resolved.started_at == wall(T0)


def test_restore_keeps_age_and_failures_so_account_alerts_do_not_flap() -> None:
    rules = (rule("stale", "age > 5m"), rule("failing", "failures >= 2"))
    e = engine(*rules)
    e.register_account(ACCT, EXCH, T0)
    e.poll_failed(ACCT, EXCH, T0 + 1)
    assert events(e.poll_failed(ACCT, EXCH, T0 + 2)) == [("firing", "failing")]
    assert events(e.tick(T0 + 400)) == [("firing", "stale")]
    states, accts = roundtrip(e)

    e2 = engine(*rules)  # the restart
    e2.register_account(ACCT, EXCH, T0 + 500)
    assert e2.restore(states, accts, T0 + 500) == []
    assert e2.tick(T0 + 510) == []  # still stale, still failing: nothing new, nothing resolved
    assert {a.event for a in poll(e2, T0 + 520)} == {"resolved"}


def test_restore_under_changed_rules_closes_what_they_no_longer_produce() -> None:
    e = engine(LOW, rule("gone", "total < 1"), rule("gone-pending", "total < 1", for_=60))
    poll(e, T0, row(available="1", total="0"))
    states, accts = roundtrip(e)
    e2 = engine(LOW)
    [closed] = e2.restore(states, accts, T0 + 100)  # pending of a gone rule: dropped silently
    assert (closed.event, closed.rule, closed.resolved_at) == ("resolved", "gone", wall(T0 + 100))
    assert closed.summary == "gone bitso-treasury bitso/USDT: total=0 (closed, rule removed)"
    assert closed.values == {"total": D(0)}
    assert closed.started_at == wall(T0)
    assert [s.rule for s in e2.states()] == ["low-available"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "resolved"}, "phase"),
        ({"severity": "fatal"}, "severity"),
        ({"values": {"available": "lots"}}, "not decimals"),
        ({"since": "yesterday"}, "number"),
    ],
)
def test_state_json_rejects_bad_documents(change: dict[str, object], message: str) -> None:
    e = engine(LOW)
    poll(e, T0, row(available="1"))
    doc = e.states()[0].to_json() | change
    with pytest.raises((ValueError, TypeError), match=message):
        AlertState.from_json(doc)


def test_restored_state_that_does_not_fit_the_rule_scope_is_closed() -> None:
    e = engine(LOW)
    poll(e, T0, row(available="1"))
    [state] = e.states()
    state.venue = state.asset = None  # a corrupt store: a row rule's state without a row
    e2 = engine(LOW)
    [closed] = e2.restore([state], [], T0 + 1)
    assert closed.summary.endswith("(closed, rule scope changed)")
    assert e2.states() == [] and e2.rules == (LOW,)


def test_exported_states_are_copies() -> None:
    e = engine(LOW)
    poll(e, T0, row(available="1"))
    e.states()[0].values["available"] = D(99)
    e.accounts()[0].failures = 7
    assert e.states()[0].values == {"available": D(1)}
    assert e.accounts()[0].failures == 0


# --------------------------------------------------------------------------- reload


def test_replace_rules_keeps_state_of_unchanged_rules() -> None:
    low = rule("low", "available < 5000", for_=60)
    e = engine(low, rule("other", "total < 1"))
    poll(e, T0, row(available="1", total="5"))  # pending
    poll(e, T0 + 60, row(available="1", total="5"))  # firing
    poll(e, T0 + 61, row("BTC", available="1", total="5"))  # BTC pending
    # Same name and expressions, new severity/labels/for: state kept and settings applied.
    low2 = rule("low", "available < 5000", for_=10, severity="critical", labels={"v": "2"})
    assert e.replace_rules([low2, rule("other", "total < 1")], T0 + 62) == []
    assert poll(e, T0 + 65, row(available="1", total="5")) == []  # no re-fire
    [btc] = poll(e, T0 + 71, row("BTC", available="1", total="5"))  # new for applies
    assert (btc.asset, btc.severity, btc.labels) == ("BTC", "critical", {"v": "2"})
    [firing_usdt] = [s for s in e.firing() if s.asset == "USDT"]
    # The new labels apply at once; the severity it fired with stays until it resolves.
    assert (firing_usdt.severity, firing_usdt.labels) == ("warning", {"v": "2"})


def test_a_firing_alert_keeps_its_routing_through_a_reload_until_it_resolves() -> None:
    """The resolve goes where the firing went: a severity or notify edited meanwhile would
    otherwise leave a sink (an MQTT retained active/ topic, a chat) with a firing that
    never resolves, and send a resolve to sinks that never saw the firing."""
    e = engine(rule("low", "available < 5000", severity="critical", notify=("pager",)))
    [fired] = poll(e, T0, row(available="1"))
    edited = rule("low", "available < 5000", severity="warning", notify=("chat",), repeat=60)
    assert e.replace_rules([edited], T0 + 1) == []
    [repeat] = poll(e, T0 + 61, row(available="1"))
    [done] = poll(e, T0 + 62, row(available="9000"))
    for alert in (fired, repeat, done):
        assert (alert.severity, alert.notify) == ("critical", ("pager",))
    [next_time] = poll(e, T0 + 63, row(available="1"))
    assert (next_time.event, next_time.severity, next_time.notify) == (
        "firing",
        "warning",
        ("chat",),
    )


def test_a_window_function_on_a_metric_the_answer_left_out_is_no_data() -> None:
    """Neither fire nor resolve on the last recorded value when the metric is missing now."""
    e = engine(rule("drop", "pct_change(total, 15m) <= -20"))
    poll(e, T0, row(total="1000"))
    [fired] = poll(e, T0 + 900, row(total="700"))
    assert fired.event == "firing"
    for minute in range(1, 30):
        assert poll(e, T0 + 900 + 60 * minute, row(total=None, available="5")) == []
    assert [s.rule for s in e.firing()] == ["drop"]


def test_replace_rules_resolves_firing_states_of_removed_or_changed_rules() -> None:
    e = engine(LOW, rule("wd", "pending_withdrawal > 0"), rule("p", "total < 1", for_=60))
    poll(e, T0, row(available="1", pending_withdrawal="1", total="0"))
    changed = rule("low-available", "available < 100")
    closed = e.replace_rules([changed, rule("p", "total < 1", for_=60)], T0 + 5)
    assert [(a.event, a.rule, a.summary) for a in closed] == [
        (
            "resolved",
            "low-available",
            "low-available bitso-treasury bitso/USDT: available=1 (closed, rule condition changed)",
        ),
        (
            "resolved",
            "wd",
            "wd bitso-treasury bitso/USDT: pending_withdrawal=1 (closed, rule removed)",
        ),
    ]
    assert [(s.rule, s.phase) for s in e.states()] == [("p", "pending")]
    # The changed rule starts afresh under the same fingerprint.
    [again] = poll(e, T0 + 10, row(available="1", pending_withdrawal="1", total="0"))
    assert (again.event, again.fingerprint) == ("firing", closed[0].fingerprint)
    assert again.started_at == wall(T0 + 10)


def test_replace_rules_resolves_rows_the_new_selector_drops() -> None:
    e = engine(LOW)
    poll(e, T0, row("USDT", available="1"), row("BTC", available="1"))
    narrowed = rule("low-available", "available < 5000", selector=Selector(assets=["BTC"]))
    [closed] = e.replace_rules([narrowed], T0 + 1)
    assert (closed.asset, closed.summary) == (
        "USDT",
        "low-available bitso-treasury bitso/USDT: available=1 "
        "(closed, rule no longer selects this row)",
    )
    assert [s.asset for s in e.firing()] == ["BTC"]
    assert poll(e, T0 + 2, row("USDT", available="1"), row("BTC", available="1")) == []


def test_forget_account_resolves_and_drops_everything() -> None:
    e = engine(LOW, rule("stale", "age > 1m"), rule("drop", "delta(total, 1h) < 0"))
    e.register_account("other", EXCH, T0)
    poll(e, T0, row(available="1", total="1"))
    closed = e.forget_account(ACCT, T0 + 5)
    assert [(a.rule, a.summary) for a in closed] == [
        (
            "low-available",
            "low-available bitso-treasury bitso/USDT: available=1 "
            "(closed, account removed from the config)",
        )
    ]
    assert e.states() == [] and len(e.history) == 0
    assert [a.account for a in e.accounts()] == ["other"]
    assert [a.account for a in e.tick(T0 + 61)] == ["other"]


def test_state_for_and_counts_see_live_states_without_copies() -> None:
    e = engine(Rule(name="low", when=parse_expression("available < 10"), for_=60.0))
    poll(e, T0, row(available="5"))
    assert e.counts() == (1, 0)
    state = e.state_for(ACCT, EXCH, "USDT", "low")
    assert state is not None and state.phase == "pending"
    poll(e, T0 + 60, row(available="5"))
    assert e.counts() == (0, 1)
    poll(e, T0 + 61, row(available="50"))
    assert e.counts() == (0, 0)
    assert e.state_for(ACCT, EXCH, "USDT", "low") is None
