"""The rule engine: balance rows and poll outcomes in, alert transitions out.

Nothing here does I/O or reads a clock on its own: the daemon feeds it poll results and
ticks, and publishes the :class:`~balwatch.alert.Alert` values it returns.

Time
----
``now`` is a unix timestamp in seconds (float). Every method takes an optional ``now``;
without one it asks the injected ``clock`` (default :func:`time.time`). Unix time rather
than a monotonic clock because alert state outlives the process (``since``,
``last_notified`` are persisted) and becomes the alert's ``started_at``/``observed_at``
(``datetime.fromtimestamp(now, UTC)``). Tests pass fake numbers and are deterministic.
A clock stepping backwards delays ``for``/``repeat`` and is ignored by the history.

Lifecycle per fingerprint (rule, account, venue, asset)
-------------------------------------------------------
* inactive -> ``pending`` when ``when`` is true and ``for`` > 0 (no notification);
  with ``for`` = 0 straight to firing.
* pending -> ``firing`` (event ``firing``) at the first evaluation where ``when`` has held
  for ``for`` seconds since it first held; pending whose ``when`` turns false goes back to
  inactive silently, so flaps shorter than ``for`` produce nothing.
* firing -> ``resolved`` (event ``resolved``, then inactive) when ``when`` is false, or,
  with a ``clear`` expression, when ``when`` is false *and* ``clear`` is true: between the
  two (the hysteresis band) the alert stays firing. Requiring both means a ``clear`` that
  overlaps ``when`` cannot make an alert resolve and re-fire on every poll.
* while firing, event ``repeat`` once ``now - last_notified >= repeat`` (checked whenever
  the rule is evaluated: on good polls for row rules, also on ticks for account rules).
* Text: ``firing`` and ``repeat`` render the rule's ``summary``/``description`` with the
  values of the moment. ``resolved`` carries the summary and description of the ``firing``
  notification, kept in the state (what people saw and will look for), unless the rule has
  a ``resolved_summary``, rendered with the values at the resolve; ``values`` always holds
  the values at the resolve.
* No data (``when``, or the ``clear`` that decides a resolve, evaluates to None: a missing
  metric, a window not yet full, a row missing from the poll) changes nothing: the phase,
  ``since`` and ``last_notified`` are kept. So pending continues after a gap and a
  firing alert neither resolves nor repeats while its input is unknown.

Polls
-----
:meth:`Engine.observe` takes a *good* poll: it records history for the metrics that window
functions of matching rules read, resets ``failures``, sets the last good poll time, then
evaluates the row rules of those rows and the account-scope rules of the account. A
(venue, asset) missing from the rows is no data for its fingerprints, and its history is
dropped (if it comes back, its windows start empty). :meth:`Engine.poll_failed` counts a
failure and evaluates account-scope rules only: a failed poll is never a zero balance.
:meth:`Engine.tick` evaluates the account-scope rules of every known account, so ``age``
rules fire without polls. ``age`` is seconds since the last good poll or, for an account
with none yet, since the engine first saw it (:meth:`Engine.register_account`, a poll, or a
restored :class:`AccountState`): an account that never answers still goes stale.

Reloads and restarts
--------------------
:meth:`Engine.replace_rules` keeps the state of rules whose ``(name, when, clear)`` are
unchanged (other settings take effect at once) and drops the rest. Dropping a *firing*
state emits a ``resolved`` notification (summary says why), because its consumers would
otherwise show it firing forever (the retained MQTT ``active`` topic, chat incidents); the
same holds for a state whose rule no longer selects its row. Its summary is the firing one
followed by ``(closed, <reason>)``: the condition was not seen to end, so no one should read
it as a recovery. Pending states drop silently.
:meth:`Engine.states`/:meth:`Engine.accounts` export plain dataclasses for the store;
:meth:`Engine.restore` takes them back under the same rules, so a restart neither re-fires
what is firing nor forgets to resolve it, and ``age``/``failures`` continue.

Rules with ``group_by`` are run by :class:`~balwatch.rules.groups.Groups`: the engine hands
it every poll outcome, and its groups are evaluated on :meth:`Engine.tick`; their states go
through the same lifecycle (:func:`advance`) and export/restore with the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal, Protocol, cast

from balwatch.alert import SEVERITIES, Alert, Event, Severity, fingerprint, group_text
from balwatch.model import METRICS, Balance, Metric
from balwatch.money import decimal_text
from balwatch.rules.expr import DECIMAL_CONTEXT, EvalContext, RowContextBase, WindowFunc
from balwatch.rules.history import History, HistoryKey
from balwatch.rules.rule import Rule
from balwatch.rules.select import RuleIndex
from balwatch.rules.template import duration_text

if TYPE_CHECKING:
    from balwatch.rules.groups import Groups

Phase = Literal["pending", "firing"]
StateKey = tuple[str, str | None, str | None]
"""(account, venue, asset); venue and asset are None for account-scope rules."""

# How often the daemon calls :meth:`Engine.tick`, so account-scope rules (``age``) fire
# without a poll arriving; ``balwatch test`` ticks as often.
TICK_SECONDS: Final = 1.0
_THOUSAND: Final = Decimal(1000)


@dataclass(slots=True)
class AccountState:
    """What the account-scope names read: persisted so ``age``/``failures`` survive restarts."""

    account: str
    exchange: str
    first_seen: float
    last_ok: float | None = None
    failures: int = 0

    def age(self, now: float) -> Decimal:
        """Seconds since the last good poll (else since first seen), to the millisecond."""
        since = self.first_seen if self.last_ok is None else self.last_ok
        # Division keeps the ideal exponent: 301 s reads "301", not "301.000".
        return DECIMAL_CONTEXT.divide(Decimal(max(0, round((now - since) * 1000))), _THOUSAND)

    def to_json(self) -> dict[str, object]:
        # Spelled out: asdict's deep copy costs ~10x more, times every account every flush.
        return {
            "account": self.account,
            "exchange": self.exchange,
            "first_seen": self.first_seen,
            "last_ok": self.last_ok,
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AccountState:
        last_ok = data["last_ok"]
        return cls(
            account=str(data["account"]),
            exchange=str(data["exchange"]),
            first_seen=_float(data["first_seen"]),
            last_ok=None if last_ok is None else _float(last_ok),
            failures=int(cast(int, data["failures"])),
        )


@dataclass(slots=True)
class AlertState:
    """One pending or firing fingerprint; inactive ones have no state.

    ``since`` is when ``when`` first held (the alert's ``started_at``); ``last_notified``
    is the last firing/repeat notification (None while pending); ``values`` are those of
    the last transition; ``summary``/``description`` are the text of the firing
    notification (None while pending, and for states saved before balwatch kept them).
    ``when``/``clear`` (sources), ``severity``, ``labels`` and
    ``notify`` are kept so a state can be matched to reloaded rules and, if its rule is
    gone, closed with a resolved notification without the old rule. A firing state keeps
    the ``severity`` and ``notify`` it fired with through reloads, so its repeats and its
    resolve are routed to the sinks that got the firing. A group's state has ``group`` (see
    :class:`~balwatch.alert.Alert`); only those may lack ``account``/``exchange``.

    ``sent_to`` is which sinks were sent the firing: the engine only keeps it (the daemon's
    publisher sets it, since silences and quiet hours may hold the firing back from some).
    A resolve is routed to those sinks alone (its ``notify``), so a sink that never heard
    of the alert is not told it is over. None: not known (a state saved before balwatch kept
    it, or not yet published): the resolve is routed by ``notify``, as the firing was.
    """

    fingerprint: str
    rule: str
    when: str
    clear: str | None
    severity: Severity
    account: str | None
    exchange: str | None
    venue: str | None
    asset: str | None
    phase: Phase
    since: float
    last_notified: float | None = None
    values: dict[str, Decimal] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    notify: tuple[str, ...] | None = None
    summary: str | None = None
    description: str | None = None
    sent_to: tuple[str, ...] | None = None
    group: dict[str, str | None] | None = None

    @property
    def key(self) -> StateKey:
        """Where a row or account state lives (a group's lives in its group)."""
        assert self.account is not None, "a group state has no row key"
        return (self.account, self.venue, self.asset)

    def copy(self) -> AlertState:
        group = None if self.group is None else dict(self.group)
        return dataclasses.replace(
            self, values=dict(self.values), labels=dict(self.labels), group=group
        )

    def to_json(self) -> dict[str, object]:
        """JSON-ready: values as decimal strings, times as unix seconds."""
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "when": self.when,
            "clear": self.clear,
            "severity": self.severity,
            "account": self.account,
            "exchange": self.exchange,
            "venue": self.venue,
            "asset": self.asset,
            "phase": self.phase,
            "since": self.since,
            "last_notified": self.last_notified,
            "values": {k: decimal_text(v) for k, v in self.values.items()},
            "labels": dict(self.labels),
            "notify": None if self.notify is None else list(self.notify),
            "summary": self.summary,
            "description": self.description,
            "sent_to": None if self.sent_to is None else list(self.sent_to),
            "group": None if self.group is None else dict(self.group),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AlertState:
        """Inverse of :meth:`to_json`; raises ValueError/KeyError/TypeError on bad data."""
        phase, severity = data["phase"], data["severity"]
        if phase not in ("pending", "firing"):
            raise ValueError(f"unknown alert phase {phase!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}")
        notify, last, sent_to = data["notify"], data["last_notified"], data.get("sent_to")
        try:
            values = {
                str(k): Decimal(str(v)) for k, v in cast(dict[str, str], data["values"]).items()
            }
        except ArithmeticError:  # decimal's InvalidOperation is not a ValueError
            raise ValueError(f"alert state values are not decimals: {data['values']!r}") from None
        return cls(
            fingerprint=str(data["fingerprint"]),
            rule=str(data["rule"]),
            when=str(data["when"]),
            clear=_opt_str(data["clear"]),
            severity=severity,
            account=_opt_str(data["account"]),
            exchange=_opt_str(data["exchange"]),
            venue=_opt_str(data["venue"]),
            asset=_opt_str(data["asset"]),
            phase=phase,
            since=_float(data["since"]),
            last_notified=None if last is None else _float(last),
            values=values,
            labels={str(k): str(v) for k, v in cast(Mapping[str, str], data["labels"]).items()},
            notify=None if notify is None else tuple(str(s) for s in cast(list[str], notify)),
            summary=_opt_str(data.get("summary")),
            description=_opt_str(data.get("description")),
            sent_to=None if sent_to is None else tuple(str(s) for s in cast(list[str], sent_to)),
            group=_group(data.get("group")),
        )

    @property
    def resolve_to(self) -> tuple[str, ...] | None:
        """The ``notify`` of this alert's resolve: the sinks sent the firing, if known."""
        return self.notify if self.sent_to is None else self.sent_to


def _float(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _group(value: object) -> dict[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected the group as a mapping, got {value!r}")
    return {str(k): _opt_str(v) for k, v in value.items()}


class AlertKey(Protocol):
    """What names an alert series: an :class:`~balwatch.alert.Alert` or an
    :class:`AlertState` has it (:meth:`Engine.alert_state`)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def account(self) -> str | None: ...
    @property
    def venue(self) -> str | None: ...
    @property
    def asset(self) -> str | None: ...
    @property
    def group(self) -> Mapping[str, str | None] | None: ...


class _RowContext(RowContextBase):
    """The EvalContext for one row; one instance is reused for every row (hot path)."""

    __slots__ = ("acct", "asset", "history", "now", "row", "venue")

    def __init__(self, history: History, acct: AccountState) -> None:
        self.history = history
        self.acct = acct
        self.row: Balance | None = None
        self.venue = ""
        self.asset = ""
        self.now = 0.0

    def metric(self, name: Metric) -> Decimal | None:
        value: Decimal | None = getattr(self.row, name)
        return value

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        if getattr(self.row, metric) is None:  # not in this answer: no data, not the last value
            return None
        key = (self.acct.account, self.venue, self.asset, metric)
        return self.history.window_value(func, key, self.now, window)

    def age(self) -> Decimal | None:
        return self.acct.age(self.now)

    def failures(self) -> int:
        return self.acct.failures


class _AccountContext(RowContextBase):
    """The EvalContext for account-scope rules: no row, so metrics and windows are absent."""

    __slots__ = ("acct", "now")

    def __init__(self, acct: AccountState) -> None:
        self.acct = acct
        self.now = 0.0

    def metric(self, name: Metric) -> Decimal | None:
        return None

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        return None

    def age(self) -> Decimal | None:
        return self.acct.age(self.now)

    def failures(self) -> int:
        return self.acct.failures


_Context = _RowContext | _AccountContext


class Engine:
    """Alert lifecycle over a rule set (module docstring). Not thread-safe: one event loop."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        clock: Callable[[], float] = time.time,
        account_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._clock = clock
        self._account_labels: dict[str, dict[str, str]] = {}
        self.set_account_labels(account_labels or {})
        self._accounts: dict[str, AccountState] = {}
        self._states: dict[StateKey, dict[str, AlertState]] = {}
        self.history = History(0)
        placeholder = AccountState("", "", 0.0)  # the contexts get the real one before use
        self._row_ctx = _RowContext(self.history, placeholder)
        self._account_ctx = _AccountContext(placeholder)
        self._rules: dict[str, Rule] = {}
        self._index = RuleIndex(())
        # Imported here: groups builds on this module's states and lifecycle.
        from balwatch.rules.groups import Groups

        self._groups: Groups = Groups(
            self.history, self._accounts, self._row_ctx, lambda a: self._account_labels.get(a, {})
        )
        self._set_rules(rules)

    # -- rules

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._index.rules

    def _set_rules(self, rules: Iterable[Rule]) -> None:
        index = RuleIndex(rules)
        by_name: dict[str, Rule] = {}
        for rule in index.rules:
            if by_name.setdefault(rule.name, rule) is not rule:
                raise ValueError(f"duplicate rule name {rule.name!r}")
        self._index, self._rules = index, by_name
        self._groups.set_rules(index.rules)
        self.history.set_retention(max((r.windows for r in index.rules), default=0.0))
        self.drop_unused_history()

    def drop_unused_history(self) -> None:
        """Forget the series of metrics that no rule's window function reads."""
        used = {m for rule in self._index.rules for m in rule.history_metrics}
        series = self.history.keys()  # History is not a dict: no iteration of its own
        for key in [k for k in series if k[3] not in used and not self._groups.uses(k)]:
            self.history.forget(key)

    def set_account_labels(self, account_labels: Mapping[str, Mapping[str, str]]) -> None:
        """New labels per account (config reloaded); live states take them at the next
        :meth:`replace_rules`."""
        self._account_labels = {a: dict(labels) for a, labels in account_labels.items()}

    def replace_rules(self, rules: Iterable[Rule], now: float | None = None) -> list[Alert]:
        """Hot reload. Returns resolved notifications for firing states that were dropped."""
        now = self._now(now)
        self._set_rules(rules)
        current = [s for states in self._states.values() for s in states.values()]
        current += self._groups.take_states()
        self._states = {}
        return self._adopt(current, now)

    # -- accounts

    def register_account(self, account: str, exchange: str, now: float | None = None) -> None:
        """Make ``account`` known to :meth:`tick` before its first poll (``age`` starts now)."""
        self._account(account, exchange, self._now(now))

    def forget_account(self, account: str, now: float | None = None) -> list[Alert]:
        """The account left the config: drop its state and history; resolve what fired."""
        now = self._now(now)
        self._accounts.pop(account, None)
        self.history.forget_account(account)
        out = self._groups.forget_account(account, now)
        for key in [k for k in self._states if k[0] == account]:
            for state in self._states.pop(key).values():
                if state.phase == "firing":
                    out.append(_closed(state, now, "account removed from the config"))
        return out

    def release(self, accounts: Collection[str], grouped: Collection[str] = ()) -> None:
        """Another replica takes these accounts and grouped rules over: forget their states,
        history and liveness, emitting nothing. Nothing is resolved or closed: the new owner
        carries the alerts on from the store (:meth:`take_over`)."""
        for account in accounts:
            self._accounts.pop(account, None)
            self.history.release(account)
        self._groups.release(accounts, grouped)
        for key in [k for k in self._states if k[0] in accounts]:
            del self._states[key]

    def take_over(
        self,
        states: Iterable[AlertState],
        accounts: Iterable[AccountState],
        samples: Iterable[tuple[HistoryKey, float, Decimal]],
        now: float | None = None,
    ) -> list[Alert]:
        """Take on what another replica left of some accounts (:meth:`release` there):
        :meth:`restore` with their history. The samples count as saved; the history of the
        accounts already here is left as it is. Returns what :meth:`restore` does."""
        now = self._now(now)
        closed = self.restore(states, accounts, now)
        taken = []
        for key, t, value in samples:
            if t <= now:
                self.history.record(key, t, value)
                taken.append(key)
        self.history.mark_saved(taken)
        return closed

    def _account(self, account: str, exchange: str, now: float) -> AccountState:
        acct = self._accounts.get(account)
        if acct is None:
            acct = self._accounts[account] = AccountState(account, exchange, now)
            self._groups.add_account(account)
        acct.exchange = exchange
        return acct

    # -- inputs

    def observe(
        self, account: str, exchange: str, rows: Iterable[Balance], now: float | None = None
    ) -> list[Alert]:
        """A good poll of ``account``: record, evaluate its rows and account rules."""
        now = self._now(now)
        acct = self._account(account, exchange, now)
        acct.last_ok = now
        acct.failures = 0
        if self._groups.active and not isinstance(rows, list | tuple):
            rows = tuple(rows)  # read twice: here and by the groups
        out: list[Alert] = []
        ctx = self._row_ctx
        ctx.acct = acct
        ctx.now = now
        record = self.history.record
        match_row = self._index.row
        states = self._states
        present: set[tuple[str, str]] = set()
        for row in rows:
            venue, asset = row.venue, row.asset
            present.add((venue, asset))
            match = match_row(account, exchange, venue, asset)
            if not match.rules:
                continue
            for metric in match.history_metrics:
                value = getattr(row, metric)
                if value is not None:
                    record((account, venue, asset, metric), now, value)
            ctx.row, ctx.venue, ctx.asset = row, venue, asset
            key = (account, venue, asset)
            row_states = states.get(key)
            for rule in match.rules:
                # Inlined fast path of _evaluate: no data, or false with no state, is a no-op.
                cond = rule.when.evaluate(ctx)
                if cond is None or not (cond or (row_states and rule.name in row_states)):
                    continue
                self._transition(rule, key, cond, ctx, now, out)
                row_states = states.get(key)
        self.history.retain(account, present)
        self._evaluate_account(acct, now, out)
        if self._groups.active:
            self._groups.observe(acct, cast(Sequence[Balance], rows), now)
        return out

    def poll_failed(self, account: str, exchange: str, now: float | None = None) -> list[Alert]:
        """A failed poll: ``failures`` + 1 and account-scope rules only (never balance rules)."""
        now = self._now(now)
        acct = self._account(account, exchange, now)
        acct.failures += 1
        self._groups.poll_failed(account)
        out: list[Alert] = []
        self._evaluate_account(acct, now, out)
        return out

    def tick(self, now: float | None = None) -> list[Alert]:
        """Evaluate account-scope rules of every known account (``age`` grows between polls),
        and the groups that polls changed since the last tick."""
        now = self._now(now)
        out: list[Alert] = []
        for acct in self._accounts.values():
            self._evaluate_account(acct, now, out)
        out += self._groups.tick(now)
        return out

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- lifecycle

    def _evaluate_account(self, acct: AccountState, now: float, out: list[Alert]) -> None:
        rules = self._index.account(acct.account, acct.exchange)
        if rules:
            ctx = self._account_ctx
            ctx.acct = acct
            ctx.now = now
            key = (acct.account, None, None)
            for rule in rules:
                self._evaluate(rule, key, ctx, now, out)

    def _evaluate(
        self, rule: Rule, key: StateKey, ctx: _Context, now: float, out: list[Alert]
    ) -> None:
        cond = rule.when.evaluate(ctx)
        if cond is not None:  # no data: nothing changes
            self._transition(rule, key, cond, ctx, now, out)

    def _transition(
        self, rule: Rule, key: StateKey, cond: bool, ctx: _Context, now: float, out: list[Alert]
    ) -> None:
        """One lifecycle step for a ``when`` that evaluated to ``cond`` (not no data)."""
        states = self._states.get(key)
        state = None if states is None else states.get(rule.name)
        if state is None:
            if not cond:
                return
            state = self._start(rule, key, ctx, now)
        event = advance(rule, state, cond, ctx, now)
        if event == "cancelled":
            self._drop(state)
        elif event is not None:
            out.append(self._notify(rule, state, event, ctx, now))
            if event == "resolved":
                self._drop(state)

    def _start(self, rule: Rule, key: StateKey, ctx: _Context, now: float) -> AlertState:
        account, venue, asset = key
        state = AlertState(
            fingerprint=fingerprint(rule.name, account, venue, asset),
            rule=rule.name,
            when=rule.when.source,
            clear=None if rule.clear is None else rule.clear.source,
            severity=rule.severity,
            account=account,
            exchange=ctx.acct.exchange,
            venue=venue,
            asset=asset,
            phase="pending",
            since=now,
            values=rule.when.values(ctx),
            labels=self._labels(rule, account),
            notify=rule.notify,
        )
        self._states.setdefault(key, {})[rule.name] = state
        return state

    def _drop(self, state: AlertState) -> None:
        states = self._states[state.key]
        del states[state.rule]
        if not states:
            del self._states[state.key]

    def _labels(self, rule: Rule, account: str) -> dict[str, str]:
        """Account labels (config) overlaid with the rule's: the rule wins."""
        return {**self._account_labels.get(account, {}), **rule.labels}

    def _notify(
        self, rule: Rule, state: AlertState, event: Event, ctx: _Context, now: float
    ) -> Alert:
        values = rule.when.values(ctx)
        if event == "resolved" and rule.clear is not None:
            values.update(rule.clear.values(ctx))  # show why it resolved
        state.values = values
        if event != "resolved":
            state.last_notified = now
        fields: dict[str, object] = {
            "account": state.account,
            "exchange": state.exchange,
            "venue": state.venue,
            "asset": state.asset,
            "rule": rule.name,
            "severity": state.severity,
            "age": duration_text(ctx.acct.age(now)),
            "failures": ctx.acct.failures,
            "values": _values_text(values),
        }
        if isinstance(ctx, _RowContext) and ctx.row is not None:
            row = ctx.row
            fields.update({m: row.metric(m) for m in METRICS})
        return transition_alert(rule, state, event, fields, now)

    # -- persistence and listings

    def states(self) -> list[AlertState]:
        """Copies of every pending and firing state, for the store."""
        rows = [s.copy() for states in self._states.values() for s in states.values()]
        return rows + [s.copy() for s in self._groups.states()]

    def state_for(
        self, account: str, venue: str | None, asset: str | None, rule: str
    ) -> AlertState | None:
        """The live state behind one alert, or None once it is inactive (not a copy)."""
        return self._states.get((account, venue, asset), {}).get(rule)

    def alert_state(self, alert: AlertKey) -> AlertState | None:
        """The live state behind ``alert`` (of a row, an account or a group), or None once
        it is inactive: ``alert`` is an :class:`~balwatch.alert.Alert` or a state (a copy
        does: what it names is looked up, not the object)."""
        if alert.group is not None:
            return self._groups.state(alert.rule, alert.group, alert.fingerprint)
        if alert.account is None:
            return None
        return self.state_for(alert.account, alert.venue, alert.asset, alert.rule)

    @property
    def groups(self) -> Groups:
        """The groups of the rules with ``group_by`` (what ``balwatch eval`` shows)."""
        return self._groups

    def find(self, fingerprint: str) -> AlertState | None:
        """A copy of the pending or firing state with this fingerprint (of a row, an account
        or a group), or None."""
        for states in self._states.values():
            for state in states.values():
                if state.fingerprint == fingerprint:
                    return state.copy()
        found = self._groups.find(fingerprint)
        return None if found is None else found.copy()

    def firing_alerts(self) -> list[Alert]:
        """What each firing alert is now, as a ``firing`` document (with a new ``id``): the
        text it fired with, the values of its last notification. For putting it on a
        retained topic again; the engine's state does not change."""
        return [
            firing_alert(state, state.since if state.last_notified is None else state.last_notified)
            for state in self.firing()
        ]

    def live_firing(self) -> list[AlertState]:
        """The firing states themselves, not copies: for the publisher, which keeps their
        ``sent_to`` (nothing else of them may be changed)."""
        rows = [s for states in self._states.values() for s in states.values()]
        return [s for s in (*rows, *self._groups.states()) if s.phase == "firing"]

    def counts(self) -> tuple[int, int]:
        """(pending, firing), without copying every state as :meth:`states` does."""
        phases = [s.phase for states in self._states.values() for s in states.values()]
        phases += [s.phase for s in self._groups.states()]
        return phases.count("pending"), phases.count("firing")

    def firing(self) -> list[AlertState]:
        return [s for s in self.states() if s.phase == "firing"]

    def pending(self) -> list[AlertState]:
        return [s for s in self.states() if s.phase == "pending"]

    def accounts(self) -> list[AccountState]:
        """Copies of every known account's liveness, for the store."""
        return [dataclasses.replace(a) for a in self._accounts.values()]

    def restore(
        self,
        states: Iterable[AlertState],
        accounts: Iterable[AccountState] = (),
        now: float | None = None,
    ) -> list[Alert]:
        """Load persisted states under the current rules (same matching as a reload).

        Meant for start-up, before the first poll: a restored state replaces a live one.

        Restored accounts become known to :meth:`tick`. Returns resolved notifications for
        restored firing states that the current rules no longer produce; call
        :meth:`forget_account` for accounts no longer configured.
        """
        now = self._now(now)
        for acct in accounts:
            if acct.account not in self._accounts:
                self._groups.add_account(acct.account)
            self._accounts[acct.account] = dataclasses.replace(acct)
        return self._adopt([s.copy() for s in states], now)

    def _adopt(self, states: list[AlertState], now: float) -> list[Alert]:
        """Keep states the current rules still produce; close the others (firing: resolved)."""
        out: list[Alert] = []
        for state in states:
            if state.group is not None:
                out += self._groups.adopt(state, self._rules.get(state.rule), now)
                continue
            rule = self._rules.get(state.rule)
            reason = _mismatch(rule, state)
            if reason is not None:
                if state.phase == "firing":
                    out.append(_closed(state, now, reason))
                continue
            assert rule is not None and state.account is not None
            state.labels = self._labels(rule, state.account)
            if state.phase != "firing":
                # A firing alert keeps the routing it fired with, so its repeats and its
                # resolve reach the sinks that got the firing; a new one applies next time.
                state.severity = rule.severity
                state.notify = rule.notify
            self._states.setdefault(state.key, {})[state.rule] = state
        return out


def firing_alert(state: AlertState, observed: float) -> Alert:
    """A ``firing`` notification of a firing ``state`` (a new ``id``), as it fired: its text,
    the values of its last notification, observed at ``observed``."""
    return Alert(
        fingerprint=state.fingerprint,
        event="firing",
        rule=state.rule,
        severity=state.severity,
        account=state.account,
        exchange=state.exchange,
        venue=state.venue,
        asset=state.asset,
        # States saved before balwatch kept the text: the default summary's form.
        summary=_seen(
            state.summary, f"{state.rule} {_where(state)}: " + _values_text(state.values)
        ),
        description=_seen(state.description, ""),
        labels=dict(state.labels),
        expression=state.when,
        values=dict(state.values),
        started_at=_wall(state.since),
        observed_at=_wall(observed),
        notify=state.notify,
        group=state.group,
    )


def _mismatch(rule: Rule | None, state: AlertState) -> str | None:
    """Why ``rule`` cannot carry ``state`` on, or None when it can."""
    if rule is None:
        return "rule removed"
    if rule.condition != (state.rule, state.when, state.clear):
        return "rule condition changed"
    if rule.account_scope != (state.venue is None):
        return "rule scope changed"
    if state.account is None or state.exchange is None:
        return "not an alert of a row or an account"
    if state.venue is None or state.asset is None:
        selected = rule.selector.matches_account(state.account, state.exchange)
    else:
        selected = rule.selector.matches(state.account, state.exchange, state.venue, state.asset)
    return None if selected else "rule no longer selects this row"


def advance(
    rule: Rule, state: AlertState, cond: bool, ctx: EvalContext, now: float
) -> Event | Literal["cancelled"] | None:
    """The lifecycle (module docstring) for a state whose ``when`` is ``cond`` (not no data).

    Returns what to notify (the state is firing by then), ``cancelled`` for a pending state
    to drop silently, or None. After ``resolved`` or ``cancelled`` the state is over.
    """
    if state.phase == "pending":
        if not cond:
            return "cancelled"
        if now - state.since >= rule.for_:
            state.phase = "firing"
            return "firing"
        return None
    if not cond:
        clear = True if rule.clear is None else rule.clear.evaluate(ctx)
        if clear is None:  # no data for the recovery condition: nothing changes
            return None
        if clear:
            return "resolved"
        # else: in the hysteresis band, still firing
    last = state.last_notified
    if rule.repeat is not None and (last is None or now - last >= rule.repeat):
        return "repeat"
    return None


def transition_alert(
    rule: Rule, state: AlertState, event: Event, fields: dict[str, object], now: float
) -> Alert:
    """The notification of ``state`` for ``event`` (a row's or a group's): the rule's text
    rendered over ``fields``, the values the state holds now."""
    summary, description = alert_text(rule, state, event, fields)
    moment = _wall(now)
    return Alert(
        fingerprint=state.fingerprint,
        event=event,
        rule=rule.name,
        severity=state.severity,
        account=state.account,
        exchange=state.exchange,
        venue=state.venue,
        asset=state.asset,
        summary=summary,
        description=description,
        labels=dict(state.labels),
        expression=rule.when.source,
        values=dict(state.values),
        started_at=_wall(state.since),
        observed_at=moment,
        resolved_at=moment if event == "resolved" else None,
        notify=state.resolve_to if event == "resolved" else state.notify,
        group=None if state.group is None else dict(state.group),
    )


def alert_text(
    rule: Rule, state: AlertState, event: Event, fields: Mapping[str, object]
) -> tuple[str, str]:
    """The summary and description of ``event`` (module docstring, Text), ``fields`` the
    templates' values of the moment; a ``firing`` keeps its text in ``state``."""
    summary = (
        f"{rule.name} {_where(state)}: {fields['values']}"
        if rule.summary is None
        else rule.summary.render(fields)
    )
    description = (
        rule.description
        if rule.description_template is None
        else rule.description_template.render(fields)
    )
    if event == "firing":
        state.summary, state.description = summary, description
    elif event == "resolved":
        summary = _seen(state.summary, summary)
        description = _seen(state.description, description)
        if rule.resolved_summary is not None:
            summary = rule.resolved_summary.render(fields)
    return summary, description


def _closed(state: AlertState, now: float, reason: str) -> Alert:
    """Resolved notification for a firing state dropped by a reload, restore or forget."""
    moment = _wall(now)
    seen = _seen(state.summary, f"{state.rule} {_where(state)}")
    return Alert(
        fingerprint=state.fingerprint,
        event="resolved",
        rule=state.rule,
        severity=state.severity,
        account=state.account,
        exchange=state.exchange,
        venue=state.venue,
        asset=state.asset,
        summary=f"{seen} (closed, {reason})",
        description=_seen(state.description, ""),
        labels=state.labels,
        expression=state.when,
        values=state.values,
        started_at=_wall(state.since),
        observed_at=moment,
        resolved_at=moment,
        notify=state.resolve_to,
        group=state.group,
    )


def _seen(kept: str | None, otherwise: str) -> str:
    """The text an alert fired with, or ``otherwise`` for a state saved without it."""
    return otherwise if kept is None else kept


def _where(state: AlertState) -> str:
    if state.group is not None:
        return group_text(state.group)
    if state.asset is None:
        return str(state.account)
    return f"{state.account} {state.venue}/{state.asset}"


def _values_text(values: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{k}={decimal_text(v)}" for k, v in values.items())


def _wall(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)
