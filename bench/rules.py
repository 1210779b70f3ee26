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

Portfolio rules, in the same run, over the same 10,000 rows: 50 rules with ``group_by``
(17 by asset, 17 by venue, 16 by account; sums, extremes, averages, counts, USD values and
hour-long changes of sums), on an engine of their own:

* grouped cold cycle: the first observation of every account (fills the caches and builds
  every group);
* grouped cycle: ``Engine.observe`` for all 1,000 accounts with the groups evaluated after
  every 33rd, as a 30 s poll round meets the daemon's once-a-second tick (``Groups.tick``,
  the part of ``Engine.tick`` that is theirs), balances unchanged (target <= 100 ms); and
  the same with every balance changed (every row's contributions recomputed, no target);
* grouped update: one account's poll with all its 10 rows changed, and the evaluation of
  the groups it touched (target <= 1 ms).

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
TICKS_PER_ROUND = 30  # a 30 s poll round meets the daemon's ticker 30 times
Polls = dict[str, tuple[str, list[Balance]]]


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


def make_grouped_rules() -> list[Rule]:
    """50 portfolio rules: treasury floors per asset, exposure per venue, value per account."""
    rules: list[Rule] = []
    by_asset = [
        "sum(available) < 5000000",
        "min(available) < 1000",
        "sum(usd(total)) > 100000000",
        "count() < 900",
        "avg(available - pending_withdrawal) < 100",
    ]
    for i in range(17):  # the first ten: one asset each; the others: every asset
        select = Selector(assets=[ASSETS[i]]) if i < len(ASSETS) else Selector()
        rules.append(
            Rule(
                name=f"asset-{i}",
                when=parse_expression(by_asset[i % len(by_asset)]),
                selector=select,
                group_by=("asset",),
            )
        )
    by_venue = [
        "sum(usd(total)) > 20000000",
        "max(total) > 50000",
        "pct_change(sum(usd(total)), 1h) <= -10",
    ]
    for i in range(17):  # every other one: one exchange's venues
        select = Selector(exchanges=[EXCHANGES[i % 4]]) if i % 2 else Selector()
        rules.append(
            Rule(
                name=f"venue-{i}",
                when=parse_expression(by_venue[i % len(by_venue)]),
                selector=select,
                group_by=("venue",),
            )
        )
    by_account = [
        "pct_change(sum(usd(total)), 1h) <= -10",
        "sum(usd(total)) < 1000",
        "min(available) < 0",
    ]
    for i in range(16):
        rules.append(
            Rule(
                name=f"account-{i}",
                when=parse_expression(by_account[i % len(by_account)]),
                group_by=("account",),
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


def grouped_cycle(engine: Engine, polls: Polls, now: float) -> float:
    """One poll round with the daemon's ticks in between (module docstring)."""
    every = len(polls) // TICKS_PER_ROUND
    start = time.perf_counter()
    for i, (account, (exchange, rows)) in enumerate(polls.items(), 1):
        engine.observe(account, exchange, rows, now)
        if i % every == 0:
            engine.groups.tick(now)
    return time.perf_counter() - start


def changed(polls: Polls, step: int) -> Polls:
    """Every balance moved by ``step``."""
    return {
        account: (exchange, [row._replace(available=row.available + step) for row in rows])  # type: ignore[operator]
        for account, (exchange, rows) in polls.items()
    }


def grouped_figures(polls: Polls) -> None:
    rules = make_grouped_rules()
    engine = Engine(rules, clock=lambda: 0.0)
    now = 1_700_000_000.0
    cold = grouped_cycle(engine, polls, now)
    steady = []
    for _ in range(10):
        now += POLL
        steady.append(grouped_cycle(engine, polls, now))
    moving = []
    for step in range(1, 4):
        now += POLL
        moving.append(grouped_cycle(engine, changed(polls, step), now))
    account = account_name(7)
    exchange, rows = polls[account]
    answers = [changed({account: (exchange, rows)}, step)[account][1] for step in (1, 2)]
    updates = []
    for i in range(1000):
        now += POLL
        start = time.perf_counter()
        engine.observe(account, exchange, answers[i % 2], now)
        engine.groups.tick(now)
        updates.append(time.perf_counter() - start)
    groups = len(engine.groups.views(now))
    print(
        f"grouped rules: {len(rules)} (17 by asset, 17 by venue, 16 by account), groups: {groups}"
    )
    print(f"grouped cold cycle:        {cold * 1000:8.2f} ms")
    print(f"grouped cycle, unchanged:  {statistics.median(steady) * 1000:8.2f} ms  (target 100 ms)")
    print(f"grouped cycle, all moved:  {statistics.median(moving) * 1000:8.2f} ms")
    print(f"grouped, one account:      {statistics.median(updates) * 1000:8.3f} ms  (target 1 ms)")


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
    grouped_figures(polls)


if __name__ == "__main__":
    main()
