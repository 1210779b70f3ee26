"""Rule engine throughput: a full cycle over 10,000 rows and one account's update.

Synthetic but shaped like a real deployment: 1,000 accounts on four exchanges, 10 assets
each, 500 rules. Most rules select one or two named accounts and a couple of assets (the
"low balance on this hot wallet" kind); a few select a whole exchange; a handful are global
(AML lock, sudden drop over a 15m window, locked above total, stale account, failing polls).

Figures (one core; steady-state figures are medians of repeated runs):

* cold cycle: the first observation of every account, once (fills the selector caches);
* cycle: ``Engine.observe`` for all 1,000 accounts, steady state (target <= 50 ms);
* update: ``Engine.observe`` for one account's 10 rows (target <= 0.5 ms);
* load: the same 500 rules written as YAML (10 files of 50), read, validated, compiled
  and checked against the 1,000 accounts and the sinks, as ``balwatch check`` does
  (target <= 0.5 s).

Run: ``.venv/bin/python bench/rules.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import yaml

from balwatch.adapters import REPORTED_METRICS
from balwatch.model import Balance
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.load import load_rule_set
from balwatch.rules.rule import Rule
from balwatch.rules.select import Exclude, Selector

ACCOUNTS = 1000
EXCHANGES = ("bitso", "coinw", "kunacore", "coinapi")
ASSETS = ("USDT", "BTC", "ETH", "MXN", "USD", "EUR", "UAH", "SOL", "XRP", "TRX")
POLL = 30.0


def account_name(i: int) -> str:
    return f"acct-{i:04d}"


def make_rules() -> list[Rule]:
    rules: list[Rule] = []
    specific = [
        "available < 5000",
        "usd(available) < 25000",
        "pending_withdrawal > 0.25 * total",
        "available < 0.1 * total",
    ]
    for i in range(480):
        accounts = [account_name((i * 2) % ACCOUNTS), account_name((i * 2 + 1) % ACCOUNTS)]
        assets = [ASSETS[i % 10], ASSETS[(i + 3) % 10]]
        rules.append(
            Rule(
                name=f"specific-{i}",
                when=parse_expression(specific[i % len(specific)]),
                clear=parse_expression("available >= 6000") if i % 4 == 0 else None,
                for_=120.0 if i % 3 == 0 else 0.0,
                selector=Selector(accounts=accounts, assets=assets),
            )
        )
    for i in range(15):
        rules.append(
            Rule(
                name=f"exchange-{i}",
                when=parse_expression("hold > 0.5 * total"),
                selector=Selector(exchanges=[EXCHANGES[i % 4]], assets=[ASSETS[i % 10]]),
            )
        )
    global_rules = {
        "aml-lock": "aml_locked > 0",
        "sudden-drop": "pct_change(total, 15m) <= -20",
        "locked-above-total": "locked > total",
        "stale": "age > 5m",
        "failing": "failures >= 3",
    }
    for name, source in global_rules.items():
        rules.append(
            Rule(
                name=name,
                when=parse_expression(source),
                selector=Selector(exclude=Exclude(accounts=["test-*"])),
            )
        )
    return rules


def make_rows() -> dict[str, tuple[str, list[Balance]]]:
    polls: dict[str, tuple[str, list[Balance]]] = {}
    for i in range(ACCOUNTS):
        account, exchange = account_name(i), EXCHANGES[i % 4]
        rows = [
            Balance(
                account=account,
                exchange=exchange,
                venue=exchange,
                asset=asset,
                raw_asset=asset.lower(),
                total=Decimal(10000 + i + j),
                available=Decimal(8000 + i),
                locked=Decimal(2000 + j),
                pending_withdrawal=Decimal(j),
                hold=Decimal(0),
                aml_locked=Decimal(0),
                rate_usd=Decimal("1.5"),
            )
            for j, asset in enumerate(ASSETS)
        ]
        polls[account] = (exchange, rows)
    return polls


def cycle(engine: Engine, polls: dict[str, tuple[str, list[Balance]]], now: float) -> float:
    start = time.perf_counter()
    for account, (exchange, rows) in polls.items():
        engine.observe(account, exchange, rows, now)
    return time.perf_counter() - start


def rule_yaml(rule: Rule) -> dict[str, object]:
    """``rule`` as a user would write it in a rule file."""
    select = {
        key: list(globs)
        for key in ("accounts", "exchanges", "venues", "assets")
        if (globs := getattr(rule.selector, key))
    }
    exclude = {
        key: list(globs)
        for key in ("accounts", "exchanges", "venues", "assets")
        if (globs := getattr(rule.selector.exclude, key))
    }
    if exclude:
        select["exclude"] = exclude  # type: ignore[assignment]
    doc: dict[str, object] = {"name": rule.name, "select": select, "when": rule.when.source}
    if rule.clear is not None:
        doc["clear"] = rule.clear.source
    if rule.for_:
        doc["for"] = f"{rule.for_:g}s"
    doc["summary"] = "{account}: {values}"
    return doc


def load_seconds(rules: list[Rule], runs: int = 5) -> float:
    """Median time to load and check ``rules`` from YAML files."""
    accounts = {account_name(i): EXCHANGES[i % 4] for i in range(ACCOUNTS)}
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(rules), 50):
            doc = {
                "defaults": {"severity": "warning", "notify": ["ops-mqtt"]},
                "rules": [rule_yaml(rule) for rule in rules[start : start + 50]],
            }
            Path(tmp, f"bench-{start:03d}.rules.yaml").write_text(yaml.safe_dump(doc))
        times = []
        for _ in range(runs):
            start_time = time.perf_counter()
            loaded = load_rule_set(
                ["*.rules.yaml"],
                Path(tmp),
                sink_names=["ops-mqtt"],
                accounts=accounts,
                reported_metrics=REPORTED_METRICS,
            )
            times.append(time.perf_counter() - start_time)
            assert len(loaded.rules) == len(rules), "every rule loads"
    return statistics.median(times)


def main() -> None:
    rules = make_rules()
    polls = make_rows()
    engine = Engine(rules, clock=lambda: 0.0)
    now = 1_700_000_000.0
    cold = cycle(engine, polls, now)
    cycles = []
    for _ in range(15):
        now += POLL
        cycles.append(cycle(engine, polls, now))
    exchange, rows = polls[account_name(7)]
    updates = []
    for _ in range(2000):
        now += POLL
        start = time.perf_counter()
        engine.observe(account_name(7), exchange, rows, now)
        updates.append(time.perf_counter() - start)
    firing = len(engine.firing())
    print(f"rules: {len(rules)}, rows per cycle: {ACCOUNTS * len(ASSETS)}, firing: {firing}")
    print(f"cold cycle (fills caches): {cold * 1000:8.2f} ms")
    print(f"full cycle, 10,000 rows:   {statistics.median(cycles) * 1000:8.2f} ms  (target 50 ms)")
    print(
        f"one account, 10 rows:      {statistics.median(updates) * 1000:8.3f} ms  (target 0.5 ms)"
    )
    print(f"load and check 500 rules:  {load_seconds(rules) * 1000:8.2f} ms  (target 500 ms)")


if __name__ == "__main__":
    main()
