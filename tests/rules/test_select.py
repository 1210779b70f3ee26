"""Selectors (globs, exclude, account scope) and the rule index with its caches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.rules.select import Exclude, RuleIndex, Selector, is_literal


def rule(name: str, selector: Selector, when: str = "available < 1") -> Rule:
    return Rule(name=name, when=parse_expression(when), selector=selector)


def test_empty_or_none_selects_everything() -> None:
    for selector in (Selector(), Selector(accounts=None, assets=[], exclude=Exclude(venues=None))):
        assert selector.matches("any", "bitso", "bitso", "USDT")


def test_globs_are_fnmatchcase() -> None:
    s = Selector(accounts=["bitso-*", "kuna-?"], assets=["USD[TC]", "BTC"])
    assert s.matches("bitso-treasury", "bitso", "bitso", "USDT")
    assert s.matches("kuna-1", "kunacore", "kunacore", "USDC")
    assert s.matches("bitso-x", "bitso", "bitso", "BTC")
    assert not s.matches("kuna-12", "kunacore", "kunacore", "USDT")
    assert not s.matches("Bitso-treasury", "bitso", "bitso", "USDT")  # case-sensitive
    assert not s.matches("bitso-treasury", "bitso", "bitso", "usdt")
    assert not s.matches("bitso-treasury", "bitso", "bitso", "USDX")


def test_every_key_must_match() -> None:
    s = Selector(exchanges=["coinapi"], venues=["BINANCE*"])
    assert s.matches("a", "coinapi", "BINANCEFTS", "BTC")
    assert not s.matches("a", "coinapi", "KRAKEN", "BTC")
    assert not s.matches("a", "bitso", "BINANCE", "BTC")


def test_exclude_takes_out_a_row_matching_any_exclude_glob() -> None:
    s = Selector(
        accounts=["*"], exclude=Exclude(accounts=["test-*"], assets=["DUST", "X*"], venues=["V"])
    )
    assert s.matches("prod", "bitso", "bitso", "USDT")
    assert not s.matches("test-1", "bitso", "bitso", "USDT")
    assert not s.matches("prod", "bitso", "bitso", "DUST")
    assert not s.matches("prod", "bitso", "bitso", "XRP")
    assert not s.matches("prod", "coinapi", "V", "USDT")
    assert not Selector(exclude=Exclude(exchanges=["coinw"])).matches("a", "coinw", "coinw", "B")


def test_account_part_ignores_venue_and_asset() -> None:
    s = Selector(accounts=["a*"], assets=["BTC"], exclude=Exclude(assets=["ETH"]))
    assert s.matches_account("a1", "bitso")
    assert not s.matches_account("b1", "bitso")
    assert not Selector(exclude=Exclude(accounts=["a1"])).matches_account("a1", "bitso")


def test_lists_are_normalized_to_tuples() -> None:
    s = Selector(accounts=["a"], exclude=Exclude(assets=["B"]))
    assert s.accounts == ("a",)
    assert s.exclude.assets == ("B",)
    assert s == Selector(accounts=("a",), exclude=Exclude(assets=("B",)))


def test_a_bare_string_is_not_a_glob_list() -> None:
    with pytest.raises(TypeError, match="list of globs"):
        Selector(assets="BTC")
    with pytest.raises(TypeError, match="list of globs"):
        Exclude(accounts="a*")


def test_literal_accounts() -> None:
    assert is_literal("bitso-treasury")
    assert not is_literal("bitso-*")
    assert Selector(accounts=["a", "b"]).literal_accounts == frozenset({"a", "b"})
    assert Selector(accounts=["a", "b*"]).literal_accounts is None
    assert Selector().literal_accounts is None


def test_index_returns_matching_row_rules_in_rule_order() -> None:
    rules = [
        rule("global", Selector()),
        rule("named", Selector(accounts=["a1"], assets=["USDT"])),
        rule("wild", Selector(accounts=["a*"], exclude=Exclude(assets=["BTC"]))),
        rule("stale", Selector(accounts=["a1"]), when="age > 5m"),
        rule("other", Selector(accounts=["b1"])),
    ]
    index = RuleIndex(rules)
    names = [r.name for r in index.row("a1", "bitso", "bitso", "USDT").rules]
    assert names == ["global", "named", "wild"]
    assert [r.name for r in index.row("a1", "bitso", "bitso", "BTC").rules] == ["global"]
    assert [r.name for r in index.row("b1", "bitso", "bitso", "BTC").rules] == ["global", "other"]
    assert [r.name for r in index.account("a1", "bitso")] == ["stale"]
    assert index.account("b1", "bitso") == ()


def test_index_caches_per_row_key() -> None:
    index = RuleIndex([rule("r", Selector(assets=["USDT"]))])
    first = index.row("a", "bitso", "bitso", "USDT")
    assert index.row("a", "bitso", "bitso", "USDT") is first
    assert index.row("a", "bitso", "bitso", "BTC").rules == ()


def test_index_lists_the_metrics_whose_history_rules_read() -> None:
    rules = [
        rule("drop", Selector(), when="pct_change(total, 15m) <= -20"),
        rule("low", Selector(), when="available < 5"),
        rule("spike", Selector(), when="max_over(locked, 1h) > 2 * min_over(total, 1h)"),
    ]
    match = RuleIndex(rules).row("a", "x", "x", "BTC")
    assert set(match.history_metrics) == {"total", "locked"}
    assert len(match.history_metrics) == 2


_names = st.sampled_from(["a1", "a2", "b1", "test-1"])
_globs = st.lists(st.sampled_from(["a1", "a*", "*1", "b?", "test-*", "[ab]2", "zz"]), max_size=2)
_assets = st.lists(st.sampled_from(["BTC", "USD*", "?TH", "X"]), max_size=2)
_selectors = st.builds(
    Selector,
    accounts=_globs,
    exchanges=st.lists(st.sampled_from(["bitso", "co*"]), max_size=1),
    assets=_assets,
    exclude=st.builds(Exclude, accounts=_globs, assets=_assets),
)


_rows = st.tuples(
    _names, st.sampled_from(["bitso", "coinw"]), st.sampled_from(["BTC", "USDT", "ETH", "X"])
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_selectors, max_size=8), st.lists(_rows, max_size=10))
def test_index_agrees_with_testing_every_rule(
    selectors: list[Selector], rows: list[tuple[str, str, str]]
) -> None:
    rules = [rule(f"r{i}", s) for i, s in enumerate(selectors)]
    index = RuleIndex(rules)
    for _ in range(2):  # the second round is served from the caches
        for account, exchange, asset in rows:
            expected = [r for r in rules if r.selector.matches(account, exchange, exchange, asset)]
            assert list(index.row(account, exchange, exchange, asset).rules) == expected
