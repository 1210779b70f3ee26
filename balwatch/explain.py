"""``balwatch eval``: what each rule makes of one poll round, without sending anything.

The point is to try a rule against live balances before trusting it: for every row (or, for
account-scope rules, every account) a rule selects, show whether ``when`` is true, false or
no data, the values it read, and what a fresh engine did with it (fire, or start a
``for:`` wait). One poll has no history, so window functions are always no data here; and
``age`` is 0 right after a poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

from balwatch.alert import Alert, fingerprint
from balwatch.durations import format_duration
from balwatch.model import Balance, Metric
from balwatch.money import decimal_text
from balwatch.rules.engine import AlertState
from balwatch.rules.expr import WindowFunc
from balwatch.rules.rule import Rule
from balwatch.table import render_table


class Poll(NamedTuple):
    """One account's poll: its rows, or ``None`` when the poll failed."""

    account: str
    exchange: str
    rows: Sequence[Balance] | None


class _OnePoll:
    """The inputs an expression sees right after this single poll (an EvalContext)."""

    def __init__(self, poll: Poll, row: Balance | None) -> None:
        self.row = row
        self.failed = poll.rows is None

    def metric(self, name: Metric) -> Decimal | None:
        return None if self.row is None else self.row.metric(name)

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        return None  # one poll is no history

    def age(self) -> Decimal | None:
        return Decimal(0)  # first seen, or polled, just now

    def failures(self) -> int:
        return 1 if self.failed else 0


def explain(
    rules: Sequence[Rule],
    polls: Sequence[Poll],
    alerts: Sequence[Alert],
    pending: Sequence[AlertState],
) -> str:
    """A table: per rule, per selected row or account, the result and the alert outcome.

    ``alerts`` and ``pending`` are what an engine made of ``polls``; they are matched to
    rows by fingerprint.
    """
    fired = {alert.fingerprint: alert for alert in alerts if alert.event == "firing"}
    waiting = {state.fingerprint for state in pending}
    lines: list[list[str]] = []
    for rule in rules:
        targets = _targets(rule, polls)
        # A row rule's account whose poll failed has no rows: say so, not "selects nothing".
        unpolled = [
            poll
            for poll in polls
            if poll.rows is None
            and not rule.account_scope
            and rule.selector.matches_account(poll.account, poll.exchange)
        ]
        if not targets and not unpolled:
            lines.append([rule.name, "-", "-", "selects nothing", "", ""])
        for poll in unpolled:
            lines.append([rule.name, poll.account, "-", "no data", "", "poll failed: no rows"])
        for poll, row, venue, asset in targets:
            ctx = _OnePoll(poll, row)
            result = rule.when.evaluate(ctx)
            values = ", ".join(f"{k}={decimal_text(v)}" for k, v in rule.when.values(ctx).items())
            key = fingerprint(rule.name, poll.account, venue, asset)
            if key in fired:
                outcome = f"would fire: {fired[key].summary}"
            elif key in waiting:
                outcome = f"would be pending (fires after {format_duration(rule.for_)})"
            else:
                outcome = ""
            shown = "no data" if result is None else str(result).lower()
            where = "" if asset is None else f"{venue}/{asset}"
            lines.append([rule.name, poll.account, where, shown, values, outcome])
    table = render_table(["rule", "account", "row", "when", "values", "alert"], lines)
    if any(rule.windows for rule in rules):
        table += "\n\ndelta, pct_change, max_over, min_over: no data after a single poll"
    return table


_Target = tuple[Poll, Balance | None, str | None, str | None]
"""(poll, row, venue, asset); no row, venue or asset for account-scope rules"""


def _targets(rule: Rule, polls: Sequence[Poll]) -> list[_Target]:
    if rule.account_scope:
        return [
            (poll, None, None, None)
            for poll in polls
            if rule.selector.matches_account(poll.account, poll.exchange)
        ]
    return [
        (poll, row, row.venue, row.asset)
        for poll in polls
        for row in poll.rows or ()
        if rule.selector.matches(poll.account, poll.exchange, row.venue, row.asset)
    ]
