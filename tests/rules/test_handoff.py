"""Hand-off between two engines: one releases accounts without a word, the other takes
them over from what the first exported, and the alerts carry on (no re-fire, one resolve)."""

from __future__ import annotations

from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.rules.select import Selector
from tests.rules.test_groups import T0, events, fail, poll, row, rule

RULES = [
    Rule(
        name="low",
        when=parse_expression("available < 100"),
        selector=Selector(accounts=["bitso-hot", "kuna-hot"]),
    ),
    Rule(name="drop", when=parse_expression("delta(available, 1h) < -500")),
    Rule(name="stale", when=parse_expression("failures >= 1"), for_=10.0),
    rule("floor", "sum(available) < 100", selector=Selector(accounts=["coinw-spot", "ems"])),
]


def engine() -> Engine:
    return Engine(RULES, clock=lambda: T0)


def test_release_emits_nothing_and_forgets_no_stored_history() -> None:
    e = engine()
    poll(e, T0 - 3700, "bitso-hot", row("bitso-hot", available="1000"))
    assert sorted(events(poll(e, T0 + 1, "bitso-hot", row("bitso-hot", available="50")))) == [
        ("firing", "drop"),
        ("firing", "low"),
    ]
    fail(e, T0 + 2, "kuna-hot")  # pending stale
    e.history.take_changes()
    e.release({"bitso-hot", "kuna-hot"})
    assert e.states() == [] and e.accounts() == []
    assert e.tick(T0 + 100) == []
    changes = e.history.take_changes()
    assert not changes.forgotten and not changes.samples  # the store keeps the series


def test_the_new_owner_carries_firing_and_pending_on_and_resolves_once() -> None:
    old, new = engine(), engine()
    poll(old, T0 - 3700, "bitso-hot", row("bitso-hot", available="1000"))
    poll(old, T0 + 1, "bitso-hot", row("bitso-hot", available="50"))
    fail(old, T0 + 2, "kuna-hot")
    states, accounts = old.states(), old.accounts()
    samples = old.history.take_changes().samples
    old.release({"bitso-hot", "kuna-hot"})

    assert new.take_over(states, accounts, samples, T0 + 3) == []
    assert {s.rule: s.phase for s in new.states()} == {
        "low": "firing",
        "drop": "firing",
        "stale": "pending",
    }
    assert new.history.take_changes().samples == []  # taken over: already stored
    # still low: neither fires again; the history window is whole (delta still sees 1000)
    assert poll(new, T0 + 4, "bitso-hot", row("bitso-hot", available="60")) == []
    # the pending timer runs from the old owner's start, not from the take-over
    assert events(fail(new, T0 + 12, "kuna-hot")) == [("firing", "stale")]
    recovered = poll(new, T0 + 5, "bitso-hot", row("bitso-hot", available="2000"))
    assert sorted(events(recovered)) == [("resolved", "drop"), ("resolved", "low")]


def test_a_group_leaves_whole_with_its_accounts_and_comes_back_whole() -> None:
    old, new = engine(), engine()
    old.register_account("ems", "coinapi", T0)
    poll(old, T0, "coinw-spot", row("coinw-spot", available="30"))
    assert events(poll(old, T0, "ems", row("ems", available="30"))) == [("firing", "floor")]
    states, accounts = old.states(), old.accounts()
    old.release({"coinw-spot", "ems"}, {"floor"})
    assert old.states() == [] and old.groups.views(T0) == []
    assert old.tick(T0 + 1) == []

    new.take_over(states, accounts, [], T0 + 1)
    assert [s.rule for s in new.states()] == ["floor"]
    poll(new, T0 + 2, "coinw-spot", row("coinw-spot", available="30"))
    assert poll(new, T0 + 2, "ems", row("ems", available="40")) == []  # still low: no re-fire
    assert events(poll(new, T0 + 3, "ems", row("ems", available="400"))) == [("resolved", "floor")]


def test_release_leaves_the_other_accounts_as_they_are() -> None:
    e = engine()
    poll(e, T0, "bitso-hot", row("bitso-hot", available="50"))
    poll(e, T0, "kuna-hot", row("kuna-hot", available="50"))
    e.release({"bitso-hot"})
    assert [(s.account, s.rule) for s in e.states()] == [("kuna-hot", "low")]
    assert [a.account for a in e.accounts()] == ["kuna-hot"]
