"""build_sink: each sink config model becomes its sink, named like the config."""

from __future__ import annotations

from balwatch.sinks.mqtt import MqttSink
from balwatch.sinks.registry import build_sink
from balwatch.sinks.webhook import WebhookSink
from tests.sinks.conftest import mqtt_config, webhook_config


def test_each_type_builds_its_sink() -> None:
    mqtt = build_sink(mqtt_config("mqtt://127.0.0.1"))
    webhook = build_sink(webhook_config("https://hooks.example/x", format="slack"))
    assert isinstance(mqtt, MqttSink) and mqtt.name == "ops-mqtt"
    assert isinstance(webhook, WebhookSink) and webhook.name == "ops-hook"
