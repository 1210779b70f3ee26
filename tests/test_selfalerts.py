"""Alerts about balwatch itself fire once per problem and resolve when it ends."""

from __future__ import annotations

import json

from balwatch import redact
from balwatch.secret import Secret
from balwatch.selfalerts import SELF, SelfAlerts


def test_fires_once_and_resolves_with_a_new_id() -> None:
    now = [1_764_064_800.0]
    alerts = SelfAlerts(lambda: now[0])
    [fired] = alerts.fire("config_error", "balwatch", "balwatch", "reload rejected", "critical")
    assert alerts.fire("config_error", "balwatch", "balwatch", "again", "critical") == []
    now[0] += 60
    [resolved] = alerts.resolve("config_error", "balwatch")
    doc = resolved.to_json()
    assert (doc["status"], doc["event"], doc["asset"]) == ("resolved", "resolved", None)
    assert resolved.fingerprint == fired.fingerprint and resolved.id != fired.id
    assert doc["started_at"] == "2025-11-25T10:00:00Z"
    assert doc["resolved_at"] == "2025-11-25T10:01:00Z"
    assert alerts.resolve("config_error", "balwatch") == []
    assert resolved.summary == fired.summary == "reload rejected"  # what people saw


def test_firing_self_alerts_are_listed_like_rule_alerts() -> None:
    alerts = SelfAlerts(lambda: 1_764_064_800.0)
    [fired] = alerts.fire("source_auth_failed", "treasury", "bitso", "key refused", "critical")
    [state] = alerts.states()
    assert state.to_json() | {"values": {}, "labels": {}} == {
        "fingerprint": fired.fingerprint,
        "rule": "source_auth_failed",
        "when": "",
        "clear": None,
        "severity": "critical",
        "account": "treasury",
        "exchange": "bitso",
        "venue": None,
        "asset": None,
        "phase": "firing",
        "since": 1_764_064_800.0,
        "last_notified": 1_764_064_800.0,
        "values": {},
        "labels": {},
        "notify": None,
        "summary": "key refused",
        "description": "",
        "sent_to": None,
        "group": None,
    }
    alerts.resolve("source_auth_failed", "treasury")
    assert alerts.states() == []


def test_a_configured_secret_quoted_in_the_text_is_masked() -> None:
    """A rejected reload quotes a problem; a key in it, in any form, goes out as ***."""
    key = 'sk-live "4f9a" \u00e4'
    redact.install([Secret(key)])
    alerts = SelfAlerts(lambda: 1_764_064_800.0)
    echoed = json.dumps(key)[1:-1]
    [fired] = alerts.fire("config_error", SELF, SELF, f"rejected: 'x: {echoed}'", "critical")
    [resolved] = alerts.resolve("config_error", SELF)
    for alert in (fired, resolved):
        text = json.dumps(alert.to_json(), ensure_ascii=False)
        assert "rejected: 'x: ***'" in text
        assert "4f9a" not in text
