"""Which sinks each notification goes to while silences, time intervals and inhibit rules
mute some alerts, and who is owed a firing once they no longer do.

An alert is *muted* for a sink when an active silence matches it, an inhibit rule's source
alert fires with the same ``equal`` values, its rule is in a ``mute_during`` interval (or out
of its ``active_during`` ones), or the sink itself is (sink intervals mute that sink only).
A muted alert is still evaluated and listed; the rules, after Alertmanager's:

- A firing goes to the sinks routing picks that are not muted; the alert's state keeps
  which those were (:attr:`AlertState.sent_to`, saved with it).
- A repeat goes to the sinks that got the firing and are not muted now.
- A sink that routing picks but that has not got the firing, because it was muted, is owed
  it: :meth:`Muting.catch_up` (every tick) sends it a firing once the mute is over and the
  alert still fires, once.
- A resolve goes to the sinks that got the firing, and only those (the engine routes it
  with ``sent_to``), muted or not: a silence holds back news of trouble, never the end of
  trouble people were told about. So an MQTT ``active/`` topic never keeps showing an
  alert that resolved, a chat that saw the firing sees it end, and an alert whose firing
  was muted everywhere ends without a word.

balwatch's own alerts (``config_error``, ``source_auth_failed``) are never muted: they say
balwatch cannot watch, which no silence written for balances should hide. They do inhibit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from balwatch.alert import Alert
from balwatch.config import Config
from balwatch.config.intervals import InhibitRule, TimeInterval, muted_at
from balwatch.matchers import alert_fields, matches_all
from balwatch.outbox.routing import RoutedSink, route
from balwatch.rules.engine import AlertState, Engine, firing_alert
from balwatch.rules.rule import Rule
from balwatch.silence import Silence

Fields = dict[str, str]
Routed = tuple[Alert, list[str]]
_Owed = tuple[str, str]  # (fingerprint, rule) of an alert owing some sink its firing


class MutedSink(RoutedSink, Protocol):
    """What muting reads of a sink's config besides routing."""

    @property
    def mute_during(self) -> tuple[str, ...]: ...

    @property
    def active_during(self) -> tuple[str, ...]: ...


class Muting:
    """Routes alerts with silences, intervals and inhibition applied (module docstring).

    ``sources`` gives the firing alerts that are not the engine's (balwatch's own), as
    ``(fingerprint, fields)``, for inhibit rules.
    """

    def __init__(
        self,
        engine: Engine,
        sinks: Sequence[MutedSink],
        *,
        sources: Callable[[], Iterable[tuple[str, Fields]]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._sinks = sinks
        self._by_name = {sink.name: sink for sink in sinks}
        self._other_sources = sources
        self._clock = clock
        self.instance = ""
        self._intervals: dict[str, TimeInterval] = {}
        self._inhibit: tuple[InhibitRule, ...] = ()
        self._silences: list[Silence] = []
        self._rules: tuple[tuple[Rule, ...], dict[str, Rule]] = ((), {})
        # What each owed alert is, a copy of its state at the time: the engine finds the
        # live one from it (rows and groups alike), if it is still there.
        self._owed: dict[_Owed, AlertState] = {}
        self._sources: list[tuple[str, Fields]] | None = None  # per decision, when needed

    # --- settings --------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """The config's intervals, inhibit rules and instance (at start and each reload)."""
        self._intervals = config.intervals
        self._inhibit = config.inhibit
        self.instance = config.instance

    @property
    def silences(self) -> list[Silence]:
        return list(self._silences)

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """Every stored silence (expired ones are kept but mute nothing)."""
        self._silences = list(silences)

    def adopt(self) -> None:
        """After a restore: firing alerts that still owe some sink their firing."""
        for state in self._engine.live_firing():
            told = state.sent_to
            if told is not None and set(self._routed(state)) - set(told):
                self._owe(state)

    # --- decisions -------------------------------------------------------------------

    def route(self, alerts: Sequence[Alert]) -> list[Routed]:
        """Each alert with the sinks it goes to now; keeps ``sent_to`` of firings."""
        now = self._clock()
        self._sources = None
        return [(alert, self._route(alert, now)) for alert in alerts]

    def catch_up(self) -> list[Routed]:
        """Firings owed to sinks whose mute is over, for alerts that still fire."""
        if not self._owed:
            return []
        now = self._clock()
        self._sources = None
        out: list[Routed] = []
        for key in sorted(self._owed):
            state = self._engine.alert_state(self._owed[key])
            if state is None or state.phase != "firing" or state.sent_to is None:
                del self._owed[key]
                continue
            routed = self._routed(state)
            muted = self._muted(self._fields(state), state, routed, now)
            owed = [s for s in routed if s not in state.sent_to and s not in muted]
            if owed:
                state.sent_to = (*state.sent_to, *owed)
                out.append((firing_alert(state, now), owed))
            if not set(routed) - set(state.sent_to):
                del self._owed[key]
        return out

    def statuses(self, states: Iterable[AlertState]) -> list[dict[str, list[str]]]:
        """``silenced_by`` (silence ids) and ``inhibited_by`` (fingerprints) of each state."""
        now = self._clock()
        self._sources = None
        out = []
        for state in states:
            fields = self._fields(state)
            out.append(
                {
                    "silenced_by": self.silenced_by(fields, now),
                    "inhibited_by": self._inhibited_by(fields, state.fingerprint),
                }
            )
        return out

    def silenced_by(self, fields: Mapping[str, str], now: float | None = None) -> list[str]:
        """The ids of the active silences that match an alert with these fields."""
        now = self._clock() if now is None else now
        return [s.id for s in self._silences if s.active(now) and s.matches(fields)]

    # --- inside ----------------------------------------------------------------------

    def _route(self, alert: Alert, now: float) -> list[str]:
        routed = route(
            {"severity": alert.severity, "event": alert.event}, self._sinks, alert.notify
        )
        if alert.event == "resolved":
            return routed  # to the sinks that got the firing: the engine set its notify
        state = self._engine.alert_state(alert)
        if state is None or state.fingerprint != alert.fingerprint:
            return routed  # balwatch's own: never muted
        muted = self._muted(self._fields(state), state, routed, now)
        if alert.event == "firing":
            send = [s for s in routed if s not in muted]
            state.sent_to = told = tuple(send)
        else:
            told = tuple(routed) if state.sent_to is None else state.sent_to
            send = [s for s in routed if s in told and s not in muted]
        if set(routed) - set(told):
            self._owe(state)
        return send

    def _owe(self, state: AlertState) -> None:
        key = (state.fingerprint, state.rule)
        if key not in self._owed:
            self._owed[key] = state.copy()

    def _routed(self, state: AlertState) -> list[str]:
        """The sinks routing picks for a firing of ``state``."""
        return route({"severity": state.severity, "event": "firing"}, self._sinks, state.notify)

    def _muted(
        self, fields: Fields, state: AlertState, sinks: Sequence[str], now: float
    ) -> set[str]:
        if not (self._silences or self._inhibit or self._intervals):
            return set()  # nothing can mute: the common case costs nothing more
        rule = self._rule(state.rule)
        if (
            self.silenced_by(fields, now)
            or self._inhibited_by(fields, state.fingerprint)
            or (rule is not None and self._in_quiet(now, rule.mute_during, rule.active_during))
        ):
            return set(sinks)
        by_name = self._by_name
        return {
            name
            for name in sinks
            if name in by_name
            and self._in_quiet(now, by_name[name].mute_during, by_name[name].active_during)
        }

    def _in_quiet(self, now: float, mute_during: Sequence[str], active: Sequence[str]) -> bool:
        return bool(mute_during or active) and muted_at(now, self._intervals, mute_during, active)

    def _inhibited_by(self, fields: Fields, fingerprint: str) -> list[str]:
        found: list[str] = []
        for rule in self._inhibit:
            if not matches_all(rule.target, fields):
                continue
            for source, source_fields in self._firing_sources():
                if (
                    source != fingerprint
                    and source not in found
                    and matches_all(rule.source, source_fields)
                    and all(source_fields.get(k, "") == fields.get(k, "") for k in rule.equal)
                ):
                    found.append(source)
        return found

    def _firing_sources(self) -> list[tuple[str, Fields]]:
        if self._sources is None:
            self._sources = [
                (state.fingerprint, self._fields(state)) for state in self._engine.live_firing()
            ]
            self._sources += list(self._other_sources())
        return self._sources

    def _fields(self, state: AlertState) -> Fields:
        return alert_fields(
            rule=state.rule,
            account=state.account,
            exchange=state.exchange,
            venue=state.venue,
            asset=state.asset,
            severity=state.severity,
            instance=self.instance,
            labels=state.labels,
        )

    def _rule(self, name: str) -> Rule | None:
        rules = self._engine.rules
        if rules is not self._rules[0]:
            self._rules = (rules, {rule.name: rule for rule in rules})
        return self._rules[1].get(name)


def routing(alert: Alert) -> dict[str, str]:
    """What :func:`~balwatch.outbox.routing.route` reads of an alert's document."""
    return {"severity": alert.severity, "event": alert.event}
