"""Portfolio rules: rules with ``group_by``, evaluated over groups of rows.

Which rows make which group
---------------------------
A grouped rule selects rows with ``select:`` as any rule does; ``group_by`` then puts the
selected rows with equal values of the listed keys into one group: ``account``,
``exchange``, ``venue``, ``asset``, or any other name, which is an account label (config
``labels:``; an account without that label groups under a null value). ``[]`` is one group
of every selected row. The expressions read each group through aggregates (``sum(x)``,
``min(x)``, ``max(x)``, ``avg(x)`` of a row expression ``x``, and ``count()``), and
window functions over aggregates keep a history per group.

Incremental
-----------
Each row's contributions (its value of every aggregate argument) are kept per group in a
:class:`~balwatch.rules.aggregate.GroupAggregates`, which updates sums and extremes by
delta. A poll of one account recomputes only that account's rows, and a row equal to the
one before (same values) is skipped unless an argument reads a row window (its value moves
with time). Rules with the same ``select`` and ``group_by`` share one set of groups (a
:class:`_Partition`), so a warning and a critical floor over the same wallets add the rows
up once, and an argument read by several rules (``usd(total)``) is computed once per row.

Groups whose values changed are evaluated at the next :meth:`Groups.tick` (once a second
in the daemon), so a poll round of a thousand accounts evaluates a big group a few times,
not a thousand; groups with a pending or firing alert are evaluated on
every tick (``for`` and ``repeat`` keep time), and groups of rules with window functions
whenever one of their accounts polls (the window moves), as a row rule is.

No data
-------
A number computed over part of a group is not the group's number. A group is no data (it
neither fires nor resolves, and adds nothing to its history) while

* any of its rows has no value for an aggregate's argument (a null metric, a null
  ``rate_usd`` under ``usd()``): that aggregate is no data (``count()`` still counts);
* an account that can have rows in it is not known now: its last poll failed, or it has
  not answered since balwatch started (its rows are unknown, so any group its account,
  exchange and labels fit could be short of them; one whose venues are known only blocks
  the groups of those venues);
* an account's last answer lacks a venue its earlier answers had (a multi-venue source
  that lost an exchange): until the venue is back, the groups that venue's rows can belong
  to are no data, so a missing exchange never looks like a drop in exposure. An asset that
  leaves an answer whose venue is still there has left the group (the source says the
  account holds none); a venue that really is gone for good is taken out of a rule with
  ``select: {exclude: {venues: [...]}}``, or forgotten by a restart.
* it has no rows at all.

An account removed from the config leaves its groups at once; a group it leaves without
rows has its alert closed, as a row's is.

History
-------
A group's aggregate history lives in the engine's :class:`~balwatch.rules.history.History`
(so it is stored and restored with the row history) under the key
``("#<rule>", <group JSON>, <aggregate>, "")``: no account name starts with ``#``. A sample
is taken at an evaluation with data, at most one per :data:`GROUP_SAMPLES`-th of the rule's
longest window (and per tick), so a day's window holds about a thousand samples; the
window functions compare with the live value, so the current value is never stale.

Alerts
------
A group's alert has ``group`` (the ``group_by`` keys and this group's values), the
group's ``account``/``exchange``/``venue``/``asset`` where ``group_by`` has them, a
fingerprint per (rule, group), labels: the account's labels when grouped by account, the
rule's, then the label keys of ``group_by``; and ``values``: what the expressions read
(``sum(available)``, ``pct_change(sum(usd(total)), 1h)``), then the :data:`MEMBERS_SHOWN`
rows that weigh most in the first aggregate that has an argument (for ``min`` the lowest,
otherwise the highest), each named ``ASSET@ACCOUNT`` (``ASSET@ACCOUNT/VENUE`` when the
venue is not the account's exchange) with its value of that argument.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, cast

from balwatch.alert import Alert, Event, group_fingerprint, group_text
from balwatch.model import Balance, Metric
from balwatch.rules.aggregate import GroupAggregates, usable
from balwatch.rules.engine import (
    TICK_SECONDS,
    AccountState,
    AlertState,
    _closed,
    _RowContext,
    _values_text,
    advance,
    transition_alert,
)
from balwatch.rules.expr import AggregateFunc, NumFn, WindowFunc
from balwatch.rules.history import History, HistoryKey, change, percent_change
from balwatch.rules.rule import GROUP_KEYS, Rule
from balwatch.rules.select import Selector

GROUP_SERIES: Final = "#"
"""First character of the history keys of groups (module docstring)."""
GROUP_SAMPLES: Final = 1024
MEMBERS_SHOWN: Final = 5

GroupKey = tuple[str | None, ...]
"""A group's values of its rule's ``group_by`` keys, in that order."""
Position = tuple[str, str]
"""(venue, asset) of a row in its account"""
Member = tuple[str, str, str]
"""(account, venue, asset)"""
Values = tuple[Decimal | None, ...]
Picker = Callable[[Values], Values]
Blockers = dict[GroupKey, list[tuple[str, frozenset[str] | None]]]
"""Accounts keeping groups at no data, by account-level values, each with the venues whose
groups it keeps (None: every venue)."""


@dataclass(eq=False, slots=True)
class _Group:
    key: GroupKey
    group: dict[str, str | None]
    id: str  # the group as JSON: its history key
    aggregates: GroupAggregates[Member]


@dataclass(frozen=True, slots=True)
class GroupView:
    """One group as ``balwatch eval`` shows it: ``result`` None is no data (``reason``)."""

    rule: str
    group: Mapping[str, str | None]
    fingerprint: str
    rows: int
    result: bool | None
    reason: str | None
    values: Mapping[str, Decimal]
    members: Mapping[str, Decimal]


class _Partition:
    """The groups of the rows one ``select`` picks under one ``group_by``, shared by every
    rule with both: where each account's rows are and each group's aggregates over the
    arguments all those rules read."""

    def __init__(
        self, selector: Selector, dims: tuple[str, ...], labels: Callable[[str], Mapping[str, str]]
    ) -> None:
        self.selector = selector
        self.dims = dims
        self._labels = labels
        self.portfolios: list[_Portfolio] = []
        self.arg_texts: list[str] = []  # of ``args``, which rows share between partitions
        self.args: list[NumFn] = []
        self.minimum: set[int] = set()
        self.maximum: set[int] = set()
        self.time_dependent = False  # an argument reads a row window
        # Where each key's value is in a row key (account, exchange, venue, asset); -1: label.
        self.slots = tuple((d, GROUP_KEYS.index(d) if d in GROUP_KEYS else -1) for d in dims)
        self.by_label = any(i < 0 for _, i in self.slots)
        self.account_positions = tuple(
            i for i, dim in enumerate(dims) if dim not in ("venue", "asset")
        )
        self.venue_position = dims.index("venue") if "venue" in dims else None
        self.groups: dict[GroupKey, _Group] = {}
        self.by_part: dict[GroupKey, set[GroupKey]] = {}  # account-level values -> groups
        self.where: dict[str, dict[Position, GroupKey]] = {}  # account -> its rows' groups

    def argument(self, text: str, fn: NumFn, func: AggregateFunc, timed: bool) -> int:
        """The index of an aggregate's argument, added if new (before any group exists)."""
        if text not in self.arg_texts:
            self.arg_texts.append(text)
            self.args.append(fn)
        index = self.arg_texts.index(text)
        if func == "min":
            self.minimum.add(index)
        elif func == "max":
            self.maximum.add(index)
        self.time_dependent |= timed
        return index

    def key(self, row: tuple[str, str, str, str]) -> GroupKey:
        """The group of a row, given its (account, exchange, venue, asset)."""
        labels = self._labels(row[0]) if self.by_label else {}
        return tuple(row[i] if i >= 0 else labels.get(d) for d, i in self.slots)

    def account_key(self, account: str, exchange: str) -> GroupKey:
        """The account-level part (account, exchange, labels) of its rows' groups."""
        return self.part(self.key((account, exchange, "", "")))

    def part(self, key: GroupKey) -> GroupKey:
        return tuple(key[i] for i in self.account_positions)

    def group(self, key: GroupKey) -> _Group:
        found = self.groups.get(key)
        if found is None:
            values = dict(zip(self.dims, key, strict=True))
            found = self.groups[key] = _Group(
                key,
                values,
                json.dumps(dict(sorted(values.items())), separators=(",", ":")),
                GroupAggregates(len(self.args), self.minimum, self.maximum),
            )
            self.by_part.setdefault(self.part(key), set()).add(key)
        return found

    def put(self, member: Member, key: GroupKey, values: Values) -> None:
        account, venue, asset = member
        where = self.where.get(account)
        if where is None:
            where = self.where[account] = {}
        old = where.get((venue, asset))
        if old != key:
            if old is not None:
                self.remove(account, (venue, asset))
            where[(venue, asset)] = key
        if self.group(key).aggregates.put(member, values):
            self.changed(key)

    def remove(self, account: str, position: Position) -> GroupKey | None:
        """Take a row out of its group; the group's key, or None if it was in none."""
        where = self.where.get(account)
        key = None if where is None else where.pop(position, None)
        if key is None:
            return None
        self.groups[key].aggregates.remove((account, *position))
        self.changed(key)
        return key

    def changed(self, key: GroupKey) -> None:
        for portfolio in self.portfolios:
            portfolio.dirty.add(key)


class _Portfolio:
    """One grouped rule at run time: the partition it reads, its states and what to evaluate."""

    def __init__(self, rule: Rule, partition: _Partition) -> None:
        self.rule = rule
        self.partition = partition
        partition.portfolios.append(self)
        self.aggregates: dict[str, tuple[AggregateFunc, int]] = {}
        self.shown: tuple[int, bool] | None = None  # (argument, lowest first) of members
        for agg in rule.aggregates:
            if agg.arg is None:
                self.aggregates[agg.text] = (agg.func, -1)
                continue
            text = agg.text[agg.text.index("(") + 1 : -1]
            index = partition.argument(text, agg.arg, agg.func, agg.row_windows)
            self.aggregates[agg.text] = (agg.func, index)
            if self.shown is None:
                self.shown = (index, agg.func == "min")
        self.spacing = max(TICK_SECONDS, rule.windows / GROUP_SAMPLES)
        self.series = GROUP_SERIES + rule.name
        self.states: dict[GroupKey, AlertState] = {}
        self.dirty: set[GroupKey] = set()
        self.touched: set[GroupKey] = set()
        self.last_sample: dict[GroupKey, float] = {}
        self.blockers: Blockers = {}
        self.blockers_version = -1

    def values(self, group: _Group) -> dict[str, Decimal | None]:
        aggregates = group.aggregates
        return {text: aggregates.value(func, i) for text, (func, i) in self.aggregates.items()}

    def fingerprint(self, group: _Group) -> str:
        return group_fingerprint(self.rule.name, group.group)


class _GroupContext:
    """The EvalContext of one group: aggregates, and window functions over their history.
    A grouped rule reads no row or account value outside aggregates (the rule checks it)."""

    __slots__ = ("history", "now", "series", "values")

    def __init__(self, history: History) -> None:
        self.history = history
        self.values: Mapping[str, Decimal | None] = {}
        self.series = ("", "")  # (rule series, group id)
        self.now = 0.0

    def metric(self, name: Metric) -> Decimal | None:
        return None

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        return None

    def age(self) -> Decimal | None:
        return None

    def failures(self) -> int:
        return 0

    def aggregate(self, text: str) -> Decimal | None:
        return self.values.get(text)

    def aggregate_window(self, func: WindowFunc, text: str, window: float) -> Decimal | None:
        """``func`` with the live value as the current one and the history for the past."""
        current = self.values.get(text)
        if current is None:
            return None
        key = (*self.series, text, "")
        if func in ("delta", "pct_change"):
            base = self.history.value_at(key, self.now - window)
            if base is None:  # the window is not full
                return None
            return change(base, current) if func == "delta" else percent_change(base, current)
        if func == "max_over":
            past = self.history.max_over(key, self.now, window)
            return None if past is None else max(past, current)
        past = self.history.min_over(key, self.now, window)
        return None if past is None else min(past, current)


@dataclass(frozen=True, slots=True)
class _RowMatch:
    """What one row key feeds, worked out once: per partition selecting it, the group and
    which of ``args`` are its arguments. ``args`` are the distinct aggregate arguments of
    those partitions (by text), so ``usd(total)`` is computed once for all that add it up.
    ``timed``: some argument reads a row window; ``metrics``: whose row history they read.
    """

    partitions: tuple[tuple[_Partition, GroupKey, Picker], ...]
    args: tuple[NumFn, ...]
    timed: bool
    metrics: tuple[str, ...]


def _picker(indices: Sequence[int]) -> Picker:
    if len(indices) > 1:
        return cast(Picker, operator.itemgetter(*indices))
    if indices:
        index = indices[0]
        return lambda shared: (shared[index],)
    return lambda shared: ()


@dataclass(slots=True)
class _Status:
    """What is known of one account's rows in this run."""

    answered: frozenset[str] | None = None  # venues of its last answer; None: failed/unknown
    venues: set[str] = field(default_factory=set)  # every venue its answers had


class Groups:
    """The grouped rules of an engine (module docstring). Driven by the engine: it shares
    the engine's history, accounts (name -> :class:`AccountState`), row context and labels."""

    def __init__(
        self,
        history: History,
        accounts: MutableMapping[str, AccountState],
        row_ctx: _RowContext,
        labels: Callable[[str], Mapping[str, str]],
    ) -> None:
        self._history = history
        self._accounts = accounts
        self._row_ctx = row_ctx
        self._labels = labels
        self._ctx = _GroupContext(history)
        self._portfolios: dict[str, _Portfolio] = {}
        self._partitions: list[_Partition] = []
        self._windowed: list[_Portfolio] = []
        self._rows: dict[str, dict[Position, Balance]] = {}  # each account's last answer
        self._status: dict[str, _Status] = {}
        self._unsettled: set[str] = set()  # accounts that keep some groups at no data
        self._version = 0  # of _status and _unsettled: blocker indices follow it
        self._cache: dict[tuple[str, str, str, str], _RowMatch] = {}
        self._selecting: dict[tuple[str, str], list[_Partition]] = {}  # by (account, exchange)
        self._replaced: list[AlertState] = []

    @property
    def active(self) -> bool:
        """Whether any rule has ``group_by``."""
        return bool(self._portfolios)

    # -- rules

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """New rules: groups are rebuilt from the rows known; the old states wait for
        :meth:`take_states` (the engine adopts them under the new rules)."""
        self._replaced += [s for p in self._portfolios.values() for s in p.states.values()]
        partitions: dict[tuple[Selector, tuple[str, ...]], _Partition] = {}
        self._portfolios = {}
        for rule in rules:
            if rule.group_by is None:
                continue
            shared = (rule.selector, rule.group_by)
            partition = partitions.get(shared)
            if partition is None:
                partition = partitions[shared] = _Partition(*shared, self._labels)
            self._portfolios[rule.name] = _Portfolio(rule, partition)
        self._partitions = list(partitions.values())
        self._windowed = [p for p in self._portfolios.values() if p.rule.group_windows]
        self._cache, self._selecting = {}, {}
        self._version += 1
        ctx = self._row_ctx
        for account, rows in self._rows.items():
            acct = self._accounts.get(account)
            if acct is None:
                continue
            ctx.acct, ctx.now = acct, acct.last_ok or 0.0
            for position, row in rows.items():
                self._put(acct, position, row, None)

    def take_states(self) -> list[AlertState]:
        replaced, self._replaced = self._replaced, []
        return replaced

    def adopt(self, state: AlertState, rule: Rule | None, now: float) -> list[Alert]:
        """Carry a group's state on under ``rule`` (a reload, a restart), or close it."""
        assert state.group is not None
        portfolio = None if rule is None else self._portfolios.get(rule.name)
        reason = None
        if rule is None:
            reason = "rule removed"
        elif rule.condition != (state.rule, state.when, state.clear):
            reason = "rule condition changed"
        elif portfolio is None or set(portfolio.partition.dims) != set(state.group):
            reason = "rule group_by changed"
        elif not all(
            value is None or rule.selector.matches_part(f"{key}s", value)
            for key, value in state.group.items()
            if key in GROUP_KEYS
        ):
            reason = "rule no longer selects this group"
        if reason is not None or portfolio is None or rule is None:
            return [_closed(state, now, reason or "")] if state.phase == "firing" else []
        key = tuple(state.group[d] for d in portfolio.partition.dims)
        group = portfolio.partition.group(key)
        state.labels = self._alert_labels(portfolio, group)
        if state.phase != "firing":  # as for rows: a firing alert keeps its routing
            state.severity = rule.severity
            state.notify = rule.notify
        portfolio.states[key] = state
        return []

    def uses(self, key: HistoryKey) -> bool:
        """Whether a history series is a group's that a rule still reads."""
        if not key[0].startswith(GROUP_SERIES):
            return False
        portfolio = self._portfolios.get(key[0][len(GROUP_SERIES) :])
        return portfolio is not None and key[2] in portfolio.rule.group_windows

    # -- accounts and polls

    def add_account(self, account: str) -> None:
        """An account the engine now knows: its groups wait for its first answer."""
        self._status.setdefault(account, _Status())
        self._unsettled.add(account)
        self._version += 1

    def forget_account(self, account: str, now: float) -> list[Alert]:
        """The account left the config: its rows leave their groups. The alerts of groups
        that had no other rows are closed (nothing could ever resolve them)."""
        emptied: set[tuple[_Partition, GroupKey]] = set()
        for position in self._rows.pop(account, {}):
            for partition in self._partitions:
                key = partition.remove(account, position)
                if key is not None and not partition.groups[key].aggregates:
                    emptied.add((partition, key))
        for partition in self._partitions:
            partition.where.pop(account, None)
        self._status.pop(account, None)
        if account in self._unsettled:
            self._unsettled.discard(account)
            self._version += 1
            for portfolio in self._portfolios.values():  # what it kept at no data: rare
                portfolio.dirty.update(portfolio.partition.groups)
        out = []
        for partition, key in emptied:
            for portfolio in partition.portfolios:
                state = portfolio.states.pop(key, None)
                if state is not None and state.phase == "firing":
                    out.append(_closed(state, now, "its accounts were removed from the config"))
            self._drop_if_empty(partition, key)
        return out

    def release(self, accounts: Collection[str], rules: Collection[str]) -> None:
        """Another replica takes these accounts and grouped rules over (:meth:`Engine.release`):
        the accounts' rows leave their groups, the rules' states and group history go, and
        groups left with neither rows nor a state go too; all silently. A grouped rule's
        accounts are all under one lease (balwatch.cluster.keys), so its groups leave whole."""
        emptied: set[tuple[_Partition, GroupKey]] = set()
        for account in accounts:
            for position in self._rows.pop(account, {}):
                for partition in self._partitions:
                    key = partition.remove(account, position)
                    if key is not None:
                        emptied.add((partition, key))
            for partition in self._partitions:
                partition.where.pop(account, None)
            self._status.pop(account, None)
            self._unsettled.discard(account)
        self._version += 1
        for name in rules:
            portfolio = self._portfolios.get(name)
            if portfolio is None:
                continue
            emptied.update((portfolio.partition, key) for key in portfolio.states)
            portfolio.states.clear()
            portfolio.dirty.clear()
            portfolio.touched.clear()
        for partition, key in emptied:
            self._drop_if_empty(partition, key, keep_history=True)

    def poll_failed(self, account: str) -> None:
        status = self._status.setdefault(account, _Status())
        if status.answered is not None or account not in self._unsettled:
            status.answered = None
            self._unsettled.add(account)
            self._version += 1

    def observe(self, acct: AccountState, rows: Sequence[Balance], now: float) -> None:
        """A good poll of ``acct``: its rows' contributions, and what it settles."""
        account = acct.account
        ctx = self._row_ctx
        ctx.acct, ctx.now = acct, now
        before = self._rows.get(account, {})
        # One row per position, the last if an answer repeats one: what is kept is what counts.
        current = {(row.venue, row.asset): row for row in rows}
        for position, row in current.items():
            self._put(acct, position, row, before.get(position), now)
        for position in before.keys() - current.keys():
            for partition in self._partitions:
                self._remove(partition, account, position)
        self._rows[account] = current
        self._answered(account, frozenset(venue for venue, _ in current))
        for portfolio in self._windowed:  # the window moved: evaluate as a row rule would
            portfolio.touched.update(portfolio.partition.where.get(account, {}).values())

    def _put(
        self,
        acct: AccountState,
        position: Position,
        row: Balance,
        before: Balance | None,
        now: float | None = None,
    ) -> None:
        """``row`` into the groups of the rules selecting it (the row context is set up)."""
        account = acct.account
        key = (account, acct.exchange, *position)
        match = self._cache.get(key)
        if match is None:
            match = self._cache[key] = self._match(key)
        if not match.partitions:
            return
        if now is not None:
            for metric in match.metrics:  # row windows inside aggregates
                value = getattr(row, metric)
                if value is not None:
                    self._history.record((account, *position, metric), now, value)
        same = before is not None and before == row
        if same and not match.timed:
            return
        ctx = self._row_ctx
        ctx.row, ctx.venue, ctx.asset = row, *position
        shared = _contributions(match.args, ctx)
        member = (account, *position)
        for partition, group, pick in match.partitions:
            if same and not partition.time_dependent:
                continue
            partition.put(member, group, pick(shared))

    def _match(self, key: tuple[str, str, str, str]) -> _RowMatch:
        account = key[:2]
        selecting = self._selecting.get(account)
        if selecting is None:
            selecting = self._selecting[account] = [
                p for p in self._partitions if p.selector.matches_account(*account)
            ]
        texts: dict[str, int] = {}
        args: list[NumFn] = []
        found = []
        for partition in selecting:
            if not partition.selector.matches_position(*key[2:]):
                continue
            indices = []
            for text, arg in zip(partition.arg_texts, partition.args, strict=True):
                index = texts.setdefault(text, len(args))
                if index == len(args):
                    args.append(arg)
                indices.append(index)
            found.append((partition, partition.key(key), _picker(indices)))
        metrics = {m for p, _, _ in found for r in p.portfolios for m in r.rule.history_metrics}
        timed = any(p.time_dependent for p, _, _ in found)
        return _RowMatch(tuple(found), tuple(args), timed, tuple(sorted(metrics)))

    def _remove(self, partition: _Partition, account: str, position: Position) -> None:
        key = partition.remove(account, position)
        if key is not None:
            self._drop_if_empty(partition, key)

    def _drop_if_empty(
        self, partition: _Partition, key: GroupKey, *, keep_history: bool = False
    ) -> None:
        """A group with no rows and no alert is gone, and so is its history (from the store
        too, unless ``keep_history``: another replica carries it on)."""
        group = partition.groups.get(key)
        if group is None or len(group.aggregates):
            return
        if any(key in portfolio.states for portfolio in partition.portfolios):
            return
        del partition.groups[key]
        partition.by_part[partition.part(key)].discard(key)
        for portfolio in partition.portfolios:
            portfolio.last_sample.pop(key, None)
            for text in portfolio.rule.group_windows:
                series = (portfolio.series, group.id, text, "")
                if keep_history:
                    self._history.release_series(series)
                else:
                    self._history.forget(series)

    def _answered(self, account: str, venues: frozenset[str]) -> None:
        status = self._status.setdefault(account, _Status())
        was = status.answered, set(status.venues), account in self._unsettled
        status.answered = venues
        status.venues |= venues
        settled = status.venues <= venues
        if settled:
            self._unsettled.discard(account)
        else:
            self._unsettled.add(account)
        if was != (status.answered, status.venues, not settled):
            self._version += 1
        if settled and was[2]:
            self._unblocked(account)

    def _unblocked(self, account: str) -> None:
        """Groups the account kept at no data are evaluated again."""
        acct = self._accounts.get(account)
        if acct is None:
            return
        for portfolio in self._portfolios.values():
            partition = portfolio.partition
            if partition.selector.matches_account(account, acct.exchange):
                part = partition.account_key(account, acct.exchange)
                portfolio.dirty.update(partition.by_part.get(part, ()))

    # -- no data

    def _blockers(self, portfolio: _Portfolio) -> Blockers:
        """Accounts that keep groups of ``portfolio`` at no data (see :data:`Blockers`)."""
        if portfolio.blockers_version == self._version:
            return portfolio.blockers
        partition = portfolio.partition
        selector = partition.selector
        index: Blockers = {}
        for account in sorted(self._unsettled):  # sorted: eval names the same one each time
            acct = self._accounts.get(account)
            if acct is None or not selector.matches_account(account, acct.exchange):
                continue
            status = self._status.get(account) or _Status()
            if status.answered is None:  # failed, or not answered yet: every known venue
                venues = status.venues or None
            else:  # answered without some venues it had
                venues = status.venues - status.answered
            blocked = (
                None
                if venues is None
                else frozenset(v for v in venues if selector.matches_part("venues", v))
            )
            if blocked is not None and not blocked:
                continue
            part = partition.account_key(account, acct.exchange)
            index.setdefault(part, []).append((account, blocked))
        portfolio.blockers, portfolio.blockers_version = index, self._version
        return index

    def _blocker(
        self, portfolio: _Portfolio, group: _Group
    ) -> tuple[str, frozenset[str] | None] | None:
        """An account that keeps ``group`` at no data, or None."""
        index = self._blockers(portfolio)
        if not index:
            return None
        partition = portfolio.partition
        entries = index.get(partition.part(group.key))
        if not entries:
            return None
        if partition.venue_position is None:
            return entries[0]
        venue = group.key[partition.venue_position]
        return next((e for e in entries if e[1] is None or venue in e[1]), None)

    # -- evaluation

    def tick(self, now: float) -> list[Alert]:
        """Evaluate the groups that changed, that polls touched, or that have an alert."""
        out: list[Alert] = []
        for portfolio in self._portfolios.values():
            if not (portfolio.dirty or portfolio.touched or portfolio.states):
                continue
            keys = {*portfolio.dirty, *portfolio.touched, *portfolio.states}
            portfolio.dirty, portfolio.touched = set(), set()
            for key in keys:
                self._evaluate(portfolio, key, now, out)
        return out

    def _evaluate(self, portfolio: _Portfolio, key: GroupKey, now: float, out: list[Alert]) -> None:
        group = portfolio.partition.groups.get(key)
        if group is None or not group.aggregates:
            return  # no data
        if self._unsettled and self._blocker(portfolio, group):
            return
        values = portfolio.values(group)
        if portfolio.rule.group_windows:
            self._sample(portfolio, group, values, now)
        ctx = self._context(portfolio, group, values, now)
        rule = portfolio.rule
        cond = rule.when.evaluate(ctx)
        if cond is None:
            return
        state = portfolio.states.get(key)
        if state is None:
            if not cond:
                return
            state = portfolio.states[key] = self._start(portfolio, group, ctx, now)
        event = advance(rule, state, cond, ctx, now)
        if event is None:
            return
        if event != "cancelled":
            out.append(self._notify(portfolio, group, state, event, ctx, now))
        if event in ("cancelled", "resolved"):
            del portfolio.states[key]
            self._drop_if_empty(portfolio.partition, key)

    def _context(
        self,
        portfolio: _Portfolio,
        group: _Group,
        values: Mapping[str, Decimal | None],
        now: float,
    ) -> _GroupContext:
        ctx = self._ctx
        ctx.values, ctx.series, ctx.now = values, (portfolio.series, group.id), now
        return ctx

    def _sample(
        self,
        portfolio: _Portfolio,
        group: _Group,
        values: Mapping[str, Decimal | None],
        now: float,
    ) -> None:
        """Record the group's aggregates that window functions read (module docstring)."""
        last = portfolio.last_sample.get(group.key, -math.inf)
        if now - last < portfolio.spacing:
            return
        for text in portfolio.rule.group_windows:
            value = values[text]
            if value is not None:
                self._history.record((portfolio.series, group.id, text, ""), now, value)
        portfolio.last_sample[group.key] = now

    # -- alerts

    def _start(
        self, portfolio: _Portfolio, group: _Group, ctx: _GroupContext, now: float
    ) -> AlertState:
        rule, values = portfolio.rule, group.group
        return AlertState(
            fingerprint=portfolio.fingerprint(group),
            rule=rule.name,
            when=rule.when.source,
            clear=None if rule.clear is None else rule.clear.source,
            severity=rule.severity,
            account=values.get("account"),
            exchange=self._exchange(values),
            venue=values.get("venue"),
            asset=values.get("asset"),
            phase="pending",
            since=now,
            values={**rule.when.values(ctx), **self._members(portfolio, group)},
            labels=self._alert_labels(portfolio, group),
            notify=rule.notify,
            group=dict(values),
        )

    def _notify(
        self,
        portfolio: _Portfolio,
        group: _Group,
        state: AlertState,
        event: Event,
        ctx: _GroupContext,
        now: float,
    ) -> Alert:
        rule = portfolio.rule
        read = rule.when.values(ctx)
        if event == "resolved" and rule.clear is not None:
            read.update(rule.clear.values(ctx))  # show why it resolved
        members = self._members(portfolio, group)
        state.values = {**read, **members}
        if event != "resolved":
            state.last_notified = now
        where = group_text(group.group)
        fields: dict[str, object] = {
            "account": state.account,
            "exchange": state.exchange,
            "venue": state.venue,
            "asset": state.asset,
            "rule": rule.name,
            "severity": state.severity,
            "values": _values_text(read),
            "group": where,
            "members": _values_text(members),
        }
        return transition_alert(rule, state, event, fields, now)

    def _members(self, portfolio: _Portfolio, group: _Group) -> dict[str, Decimal]:
        """The rows that weigh most in the value, by name (module docstring)."""
        if portfolio.shown is None:
            return {}
        arg, lowest = portfolio.shown
        top = group.aggregates.top(arg, MEMBERS_SHOWN, lowest=lowest)
        return {self._member_name(member): value for member, value in top}

    def _member_name(self, member: Member) -> str:
        account, venue, asset = member
        acct = self._accounts.get(account)
        if acct is not None and venue == acct.exchange:
            return f"{asset}@{account}"
        return f"{asset}@{account}/{venue}"

    def _exchange(self, group: Mapping[str, str | None]) -> str | None:
        """The group's exchange: a ``group_by`` key, or its account's."""
        if group.get("exchange") is not None:
            return group["exchange"]
        account = group.get("account")
        acct = None if account is None else self._accounts.get(account)
        return None if acct is None else acct.exchange

    def _alert_labels(self, portfolio: _Portfolio, group: _Group) -> dict[str, str]:
        account = group.group.get("account")
        labels = dict(self._labels(account)) if account is not None else {}
        labels.update(portfolio.rule.labels)
        labels.update(
            (k, v) for k, v in group.group.items() if k not in GROUP_KEYS and v is not None
        )
        return labels

    # -- listings

    def states(self) -> list[AlertState]:
        """The live states of every group (not copies)."""
        return [s for p in self._portfolios.values() for s in p.states.values()]

    def state(
        self, rule: str, group: Mapping[str, str | None], fingerprint: str
    ) -> AlertState | None:
        """The live state of ``rule``'s alert of ``group``, if it is that fingerprint's."""
        portfolio = self._portfolios.get(rule)
        dims = () if portfolio is None else portfolio.partition.dims
        if portfolio is None or set(group) != set(dims):
            return None
        state = portfolio.states.get(tuple(group[d] for d in dims))
        return state if state is not None and state.fingerprint == fingerprint else None

    def find(self, fingerprint: str) -> AlertState | None:
        """The live state with this fingerprint, of any grouped rule, or None."""
        return next((s for s in self.states() if s.fingerprint == fingerprint), None)

    def views(self, now: float) -> list[GroupView]:
        """Every group of every grouped rule as evaluating it now would see it; no alert
        state changes (for ``balwatch eval``)."""
        out = []
        for portfolio in self._portfolios.values():
            groups = portfolio.partition.groups
            for key in sorted(groups, key=_sortable):
                group = groups[key]
                values = portfolio.values(group)
                ctx = self._context(portfolio, group, values, now)
                reason = self._no_data(portfolio, group)
                result = None if reason else portfolio.rule.when.evaluate(ctx)
                if reason is None and result is None:
                    reason = "a window is not full yet, or a division by zero"
                out.append(
                    GroupView(
                        portfolio.rule.name,
                        dict(group.group),
                        portfolio.fingerprint(group),
                        len(group.aggregates),
                        result,
                        reason,
                        portfolio.rule.when.values(ctx),
                        self._members(portfolio, group),
                    )
                )
        return out

    def _no_data(self, portfolio: _Portfolio, group: _Group) -> str | None:
        """Why ``group`` is no data (module docstring), or None."""
        if not group.aggregates:
            return "no rows"
        blocker = self._blocker(portfolio, group)
        if blocker is not None:
            account, venues = blocker
            status = self._status.get(account) or _Status()
            if status.answered is not None and venues:
                return f"{account}: venue {', '.join(sorted(venues))} missing from its answer"
            acct = self._accounts.get(account)
            failed = acct is not None and acct.failures > 0
            return f"{account}: {'last poll failed' if failed else 'not polled yet'}"
        read = {i for _, i in portfolio.aggregates.values() if i >= 0}  # the partition's
        nulls = [  # arguments may be more than this rule's
            self._member_name(member)
            for member, values in group.aggregates.members()
            if any(values[i] is None for i in read)
        ]
        if nulls:
            more = f" and {len(nulls) - MEMBERS_SHOWN} more" if len(nulls) > MEMBERS_SHOWN else ""
            return f"no value for {', '.join(sorted(nulls)[:MEMBERS_SHOWN])}{more}"
        return None


def _contributions(args: Sequence[NumFn], ctx: _RowContext) -> Values:
    out = []
    for arg in args:
        try:
            value = arg(ctx)
        except ArithmeticError:  # overflow and the like: no data, as in any expression
            value = None
        out.append(usable(value))
    return tuple(out)


def _sortable(key: GroupKey) -> tuple[str, ...]:
    return tuple("" if v is None else v for v in key)
