"""Rule engine throughput: a full cycle over 10,000 rows and one account's update.

Synthetic but shaped like a real deployment: 1,000 accounts on four exchanges, 10 assets
each, 500 rules. Most rules select one or two named accounts and a couple of assets (the
"low balance on this hot wallet" kind); a few select a whole exchange; a handful are global
(AML lock, sudden drop over a 15m window, locked above total, stale account, failing polls).

Figures (one core; steady-state figures are medians of repeated runs):

* cold cycle: the first observation of every account, once (fills the selector caches);
* cycle: ``Engine.observe`` for all 1,000 accounts, steady state (target <= 50 ms);
* update: ``Engine.observe`` for one account's 10 rows (target <= 0.5 ms).

Run: ``.venv/bin/python bench/rules.py``.
"""

from __future__ import annotations

import statistics
import time
from decimal import Decimal

from balwatch.model import Balance
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
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


if __name__ == "__main__":
    main()
