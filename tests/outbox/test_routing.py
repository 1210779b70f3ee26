"""Routing table: notify list, then each sink's min_severity and send_resolved."""

from __future__ import annotations

from typing import Any

import pytest

from balwatch.config.model import MqttSinkConfig, WebhookSinkConfig
from balwatch.outbox.routing import route
from tests.outbox.doubles import alert

SINKS = (
    MqttSinkConfig.model_validate({"type": "mqtt", "name": "ops-mqtt", "url": "mqtt://broker"}),
    # Gets resolved alerts all the same: it must clear their retained active/ state.
    MqttSinkConfig.model_validate(
        {"type": "mqtt", "name": "quiet-mqtt", "url": "mqtt://b2", "send_resolved": False}
    ),
    WebhookSinkConfig.model_validate(
        {
            "type": "webhook",
            "name": "ops-slack",
            "format": "slack",
            "url": "https://hooks.example/x",
            "min_severity": "warning",
        }
    ),
    WebhookSinkConfig.model_validate(
        {
            "type": "webhook",
            "name": "pager",
            "url": "https://pager.example/x",
            "min_severity": "critical",
            "send_resolved": False,
        }
    ),
)


def doc(severity: str, event: str = "firing", **extra: Any) -> dict[str, Any]:
    status = "resolved" if event == "resolved" else "firing"
    return alert("fp", 1, severity=severity, event=event, status=status, **extra)


@pytest.mark.parametrize(
    ("alert_doc", "notify", "expected"),
    [
        (doc("info"), None, ["ops-mqtt", "quiet-mqtt"]),
        (doc("warning"), None, ["ops-mqtt", "quiet-mqtt", "ops-slack"]),
        (doc("critical"), None, ["ops-mqtt", "quiet-mqtt", "ops-slack", "pager"]),
        (doc("critical", "repeat"), None, ["ops-mqtt", "quiet-mqtt", "ops-slack", "pager"]),
        (doc("critical", "resolved"), None, ["ops-mqtt", "quiet-mqtt", "ops-slack"]),
        (doc("warning", "resolved"), None, ["ops-mqtt", "quiet-mqtt", "ops-slack"]),
        # The rule's notify list narrows; min_severity still applies; order is config order.
        (doc("critical"), ["pager", "ops-mqtt"], ["ops-mqtt", "pager"]),
        (doc("info"), ["ops-slack"], []),
        (doc("critical"), [], []),
        (doc("critical"), ["not-configured", "pager"], ["pager"]),
        # A document carrying "notify" routes by it when no list is passed.
        (doc("critical", notify=["pager"]), None, ["pager"]),
        (doc("critical", notify=None), None, ["ops-mqtt", "quiet-mqtt", "ops-slack", "pager"]),
        (doc("critical", notify=["pager"]), ["ops-slack"], ["ops-slack"]),
    ],
)
def test_route(alert_doc: dict[str, Any], notify: list[str] | None, expected: list[str]) -> None:
    assert route(alert_doc, SINKS, notify) == expected


def test_no_sinks_configured() -> None:
    assert route(doc("critical"), []) == []


def test_unknown_severity_is_an_error() -> None:
    with pytest.raises(ValueError, match="severity"):
        route(doc("fatal"), SINKS)
