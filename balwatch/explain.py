"""``balwatch eval``: what each rule makes of one poll round, without sending anything.

The point is to try a rule against live balances before trusting it: for every row (or, for
account-scope rules, every account) a rule selects, show whether ``when`` is true, false or
no data, the values it read, and what a fresh engine did with it (fire, or start a
``for:`` wait). One poll has no history, so window functions are always no data here; and
``age`` is 0 right after a poll. A rule with ``group_by`` is shown per group: its rows, the
values its expression read, the rows that weigh most in them, and why it is no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

from balwatch.alert import Alert, fingerprint, group_text
from balwatch.durations import format_duration
from balwatch.model import Balance, Metric
from balwatch.money import decimal_text
from balwatch.rules.engine import AlertState
from balwatch.rules.expr import RowContextBase, WindowFunc
from balwatch.rules.groups import GroupView
from balwatch.rules.rule import Rule
from balwatch.table import render_table


class Poll(NamedTuple):
    """One account's poll: its rows, or ``None`` when the poll failed."""

    account: str
    exchange: str
    rows: Sequence[Balance] | None


class _OnePoll(RowContextBase):
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
    groups: Sequence[GroupView] = (),
) -> str:
    """A table: per rule, per selected row, account or group, the result and the alert
    outcome.

    ``alerts``, ``pending`` and ``groups`` are what an engine made of ``polls`` (ticked once,
    so groups are evaluated); they are matched to rows and groups by fingerprint.
    """
    fired = {alert.fingerprint: alert for alert in alerts if alert.event == "firing"}
    waiting = {state.fingerprint for state in pending}
    lines: list[list[str]] = []
    for rule in rules:
        if rule.grouped:
            lines += _group_lines(rule, [g for g in groups if g.rule == rule.name], fired, waiting)
            continue
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
            outcome = _outcome(rule, key, fired, waiting)
            shown = "no data" if result is None else str(result).lower()
            where = "" if asset is None else f"{venue}/{asset}"
            lines.append([rule.name, poll.account, where, shown, values, outcome])
    table = render_table(["rule", "account", "row", "when", "values", "alert"], lines)
    if any(rule.windows for rule in rules):
        table += "\n\ndelta, pct_change, max_over, min_over: no data after a single poll"
    return table


def _outcome(rule: Rule, key: str, fired: dict[str, Alert], waiting: set[str]) -> str:
    if key in fired:
        return f"would fire: {fired[key].summary}"
    if key in waiting:
        return f"would be pending (fires after {format_duration(rule.for_)})"
    return ""


def _group_lines(
    rule: Rule, groups: Sequence[GroupView], fired: dict[str, Alert], waiting: set[str]
) -> list[list[str]]:
    """One line per group: ``account`` shows the group, ``row`` how many rows it has."""
    if not groups:
        return [[rule.name, "-", "-", "no groups: selects no row", "", ""]]
    lines = []
    for group in groups:
        shown = "no data" if group.result is None else str(group.result).lower()
        if group.reason:
            shown += f" ({group.reason})"
        values = ", ".join(f"{k}={decimal_text(v)}" for k, v in group.values.items())
        if group.members:
            members = ", ".join(f"{k}={decimal_text(v)}" for k, v in group.members.items())
            values += f"; rows: {members}" + (" ..." if group.rows > len(group.members) else "")
        rows = f"{group.rows} row{'' if group.rows == 1 else 's'}"
        outcome = _outcome(rule, group.fingerprint, fired, waiting)
        lines.append([rule.name, group_text(group.group), rows, shown, values, outcome])
    return lines


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
