"""Rule: cross-field checks (with the rule-file key at fault) and derived attributes."""

from __future__ import annotations

from typing import Any

import pytest

from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule, RuleError
from balwatch.rules.template import Template


def make(when: str = "available < 5", **kw: Any) -> Rule:
    return Rule(name=kw.pop("name", "r"), when=parse_expression(when), **kw)


@pytest.mark.parametrize(
    ("kw", "key", "message"),
    [
        ({"name": ""}, "name", "needs a name"),
        ({"for_": -1.0}, "for", ">= 0"),
        ({"for_": float("nan")}, "for", ">= 0"),
        ({"repeat": 0.0}, "repeat", "> 0"),
        ({"repeat": float("inf")}, "repeat", "> 0"),
        ({"severity": "fatal"}, "severity", "info, warning, critical"),
        ({"when": "age > 5m", "clear": parse_expression("total > 0")}, "clear", "account-scope"),
        ({"when": "age > 5m", "summary": Template("{account} {asset}")}, "summary", "{asset}"),
        (
            {"when": "failures > 2", "description_template": Template("{total}")},
            "description",
            "{total}",
        ),
    ],
)
def test_inconsistent_rules_name_the_key(kw: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(RuleError, match=message) as info:
        make(**kw)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


def test_defaults() -> None:
    rule = make()
    assert (rule.for_, rule.repeat, rule.severity, rule.notify) == (0.0, None, "warning", None)
    assert rule.selector.matches("a", "b", "c", "D")
    assert not rule.account_scope


def test_scope_history_and_windows_cover_when_and_clear() -> None:
    rule = make(
        "pct_change(total, 15m) < -20",
        clear=parse_expression("delta(available, 1h) > 0 and age < 5m"),
    )
    assert rule.history_metrics == {"total", "available"}
    assert rule.windows == 3600
    assert not rule.account_scope
    stale = make("age > 5m", clear=parse_expression("age < 1m"), summary=Template("{account}"))
    assert stale.account_scope and stale.windows == 0 and stale.history_metrics == set()
    # A row rule may recover on an account-scope condition and name row fields.
    make("available < 5", clear=parse_expression("failures == 0"), summary=Template("{asset}"))


def test_condition_identifies_state_across_reloads() -> None:
    a = make(clear=parse_expression("available > 6"), severity="critical")
    b = make(clear=parse_expression("available > 6"), for_=60)
    assert a != b  # equality is identity
    assert a.condition == b.condition == ("r", "available < 5", "available > 6")
    assert make().condition != a.condition
