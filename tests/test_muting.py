"""Which sinks each notification goes to under silences, quiet hours and inhibit rules.

The real engine and the real muting, with an injected clock: every case is a sequence of
polls and ticks and the sinks each notification is routed to, as the publisher commits it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from balwatch.alert import Alert
from balwatch.config.model import Config, MqttSinkConfig, WebhookSinkConfig
from balwatch.model import Balance
from balwatch.muting import Muting
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.silence import Silence, new_silence

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a Friday
SINKS = [
    MqttSinkConfig.model_validate({"type": "mqtt", "name": "mqtt", "url": "mqtt://h:1883"}),
    WebhookSinkConfig.model_validate(
        {"type": "webhook", "name": "chat", "url": "https://chat.example/h", "format": "slack",
         "mute_during": ["nights"]}
    ),
]  # fmt: skip
NIGHTS = {
    "name": "nights",
    "time_intervals": [{"times": [{"start_time": "22:00", "end_time": "06:00"}]}],
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def rule(name: str, when: str, **settings: Any) -> Rule:
    return Rule(name=name, when=parse_expression(when), **settings)


LOW = rule("low", "available < 5000")
STALE = rule("stale", "age > 10s")


def rows(available: str, account: str = "bitso-a") -> list[Balance]:
    return [Balance(account, "bitso", "bitso", "USDT", "usdt", available=Decimal(available))]


class Rig:
    def __init__(self, *rules: Rule, inhibit: list[dict[str, Any]] | None = None) -> None:
        self.clock = Clock()
        self.engine = Engine(rules or [LOW], clock=self.clock)
        config = Config.model_validate(
            {"instance": "prod", "time_intervals": [NIGHTS], "inhibit": inhibit or []}
        )
        self.muting = Muting(self.engine, SINKS, clock=self.clock)
        self.muting.configure(config)
        self.silences: list[Silence] = []

    def silence(self, *matchers: str, hours: float = 1) -> Silence:
        made = new_silence(
            list(matchers), starts_at=self.clock.now, ends_at=self.clock.now + hours * 3600,
            author="ana", comment="maintenance", now=self.clock.now,
        )  # fmt: skip
        self.silences.append(made)
        self.muting.set_silences(self.silences)
        return made

    def poll(self, available: str, account: str = "bitso-a") -> list[tuple[str, list[str]]]:
        return self.routed(self.engine.observe(account, "bitso", rows(available, account)))

    def tick(self) -> list[tuple[str, list[str]]]:
        return self.routed(self.engine.tick()) + [
            (f"{a.event} {a.account}", sinks) for a, sinks in self.muting.catch_up()
        ]

    def routed(self, alerts: list[Alert]) -> list[tuple[str, list[str]]]:
        return [(f"{a.event} {a.account}", sinks) for a, sinks in self.muting.route(alerts)]


def test_without_mutes_every_notification_goes_where_routing_says() -> None:
    rig = Rig()
    assert rig.poll("4000") == [("firing bitso-a", ["mqtt", "chat"])]
    assert rig.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]


def test_a_silenced_firing_goes_nowhere_and_its_resolve_neither() -> None:
    rig = Rig()
    made = rig.silence("account=bitso-a")
    assert rig.poll("4000") == [("firing bitso-a", [])]
    [state] = rig.engine.firing()
    assert state.sent_to == ()
    assert rig.muting.statuses([state]) == [{"silenced_by": [made.id], "inhibited_by": []}]
    assert rig.tick() == []  # still silenced: nothing owed is sent
    assert rig.poll("9000") == [("resolved bitso-a", [])]
    assert rig.tick() == []


def test_an_alert_still_firing_when_its_silence_ends_is_notified_then_once() -> None:
    rig = Rig()
    rig.silence("rule=low", hours=1)
    rig.poll("4000")
    rig.clock.now += 3600  # the silence is over
    assert rig.tick() == [("firing bitso-a", ["mqtt", "chat"])]
    assert rig.tick() == []
    assert rig.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]


def test_a_portfolio_rules_alert_is_silenced_owed_and_resolved_like_any() -> None:
    """A group's alert has no account: it is matched by its other fields and labels, its
    state keeps sent_to, and what it is owed is found again by its group."""
    floor = rule("floor", "sum(available) < 5000", group_by=("exchange",))
    rig = Rig(floor)
    rig.silence("exchange=bitso", "account=")  # the group's account reads as ""
    assert rig.routed(rig.engine.observe("bitso-a", "bitso", rows("4000"))) == []
    assert rig.tick() == [("firing None", [])]
    [state] = rig.engine.firing()
    assert (state.group, state.sent_to) == ({"exchange": "bitso"}, ())
    assert rig.muting.statuses([state])[0]["silenced_by"] == [rig.silences[0].id]
    rig.clock.now += 3600  # the silence is over: the firing it held back goes out, once
    assert rig.tick() == [("firing None", ["mqtt", "chat"])]
    assert rig.tick() == []
    rig.engine.observe("bitso-a", "bitso", rows("9000"))
    assert rig.tick() == [("resolved None", ["mqtt", "chat"])]


def test_a_silence_begun_while_firing_lets_the_resolve_reach_those_who_saw_the_firing() -> None:
    """Silences hold back news, not the end of trouble people were told about: MQTT's
    active/ topic and the chat that saw it fire see it end."""
    rig = Rig(rule("low", "available < 5000", repeat=60.0))
    rig.poll("4000")
    rig.silence("account=bitso-a")
    rig.clock.now += 60
    assert rig.poll("4000") == [("repeat bitso-a", [])]  # repeats are news: held back
    assert rig.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]


def test_a_sink_quiet_at_night_gets_the_firing_in_the_morning_and_others_at_once() -> None:
    rig = Rig()
    rig.clock.now = T0 + 15 * 3600  # 23:00 UTC, inside the chat sink's nights
    assert rig.poll("4000") == [("firing bitso-a", ["mqtt"])]
    assert rig.tick() == []
    rig.clock.now = T0 + 22 * 3600  # 06:00 UTC
    assert rig.tick() == [("firing bitso-a", ["chat"])]
    assert rig.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]


def test_an_alert_that_resolves_inside_the_quiet_hours_is_never_sent_to_that_sink() -> None:
    rig = Rig()
    rig.clock.now = T0 + 15 * 3600
    rig.poll("4000")
    assert rig.poll("9000") == [("resolved bitso-a", ["mqtt"])]
    rig.clock.now = T0 + 22 * 3600
    assert rig.tick() == []


def test_a_rule_active_during_office_hours_only_notifies_then() -> None:
    rig = Rig(rule("low", "available < 5000", mute_during=("nights",)))
    rig.clock.now = T0 + 15 * 3600
    assert rig.poll("4000") == [("firing bitso-a", [])]
    rig.clock.now = T0 + 22 * 3600
    assert rig.tick() == [("firing bitso-a", ["mqtt", "chat"])]


def test_inhibition_mutes_targets_while_the_source_fires_and_unmutes_them_after() -> None:
    down = rule("exchange-down", "available < 1")
    rig = Rig(
        down,
        STALE,
        inhibit=[
            {"source": ["rule=exchange-down"], "target": ["rule=stale"], "equal": ["exchange"]}
        ],
    )
    rig.engine.register_account("bitso-b", "bitso", T0)
    assert rig.poll("0.5") == [("firing bitso-a", ["mqtt", "chat"])]  # exchange-down
    rig.clock.now += 11
    alerts = rig.engine.tick()
    routed = rig.muting.route(alerts)
    # Every bitso account goes stale: one exchange-wide alert says it all.
    assert sorted((a.rule, a.account, sinks) for a, sinks in routed) == [
        ("stale", "bitso-a", []), ("stale", "bitso-b", [])
    ]  # fmt: skip
    stale = [s for s in rig.engine.firing() if s.rule == "stale"]
    [source] = [s for s in rig.engine.firing() if s.rule == "exchange-down"]
    assert [s["inhibited_by"] for s in rig.muting.statuses(stale)] == [[source.fingerprint]] * 2
    rig.clock.now += 1
    # The source resolves; bitso-a answers again, bitso-b is still stale and now told.
    assert rig.poll("7000") == [
        ("resolved bitso-a", ["mqtt", "chat"]), ("resolved bitso-a", [])
    ]  # fmt: skip
    assert [(a.rule, a.account, s) for a, s in rig.muting.catch_up()] == [
        ("stale", "bitso-b", ["mqtt", "chat"])
    ]


def test_an_alert_never_inhibits_itself_and_equal_values_must_agree() -> None:
    rig = Rig(
        LOW,
        inhibit=[{"source": ["rule=low"], "target": ["rule=low"], "equal": ["account"]}],
    )
    assert rig.poll("4000", "bitso-a") == [("firing bitso-a", ["mqtt", "chat"])]
    assert rig.poll("4000", "bitso-b") == [("firing bitso-b", ["mqtt", "chat"])]


def test_after_a_restart_what_is_owed_is_still_sent() -> None:
    rig = Rig()
    rig.silence("rule=low", hours=1)
    rig.poll("4000")
    saved = rig.engine.states()
    again = Rig()
    again.clock.now = T0 + 3600
    again.engine.restore(saved)
    again.muting.adopt()
    assert again.tick() == [("firing bitso-a", ["mqtt", "chat"])]
    assert again.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]


def test_a_state_saved_before_sinks_were_recorded_resolves_as_it_always_did() -> None:
    rig = Rig()
    rig.poll("4000")
    saved = rig.engine.states()
    for state in saved:
        state.sent_to = None
    again = Rig()
    again.engine.restore(saved)
    again.muting.adopt()
    again.silence("rule=low")
    assert again.tick() == []
    assert again.poll("9000") == [("resolved bitso-a", ["mqtt", "chat"])]
