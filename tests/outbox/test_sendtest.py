"""send-test: the synthetic alert through outbox, worker and the real sinks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from balwatch.alert import Alert
from balwatch.config.model import Config
from balwatch.outbox.sendtest import TEST_RULE, send_test, synthetic_alerts
from balwatch.sinks.registry import build_sink
from tests.brokers import Mosquitto, subscribe
from tests.chatservices import ChatService
from tests.webhooks import Reply, WebhookReceiver


def config(*sinks: dict[str, Any]) -> Config:
    return Config.model_validate({"sinks": list(sinks)})


def hook(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": "hook", "url": url, **fields}


def test_the_synthetic_alerts_are_valid_alert_documents() -> None:
    firing, resolved = synthetic_alerts(
        "hook", resolve=True, now=datetime.now(UTC), instance="treasury-prod"
    )
    for doc in (firing, resolved):
        parsed = Alert.from_json(doc)
        assert (parsed.rule, parsed.severity) == (TEST_RULE, "info")
        assert parsed.labels == {"test": "true"}
        assert "TEST" in parsed.summary
    assert (firing["event"], resolved["event"]) == ("firing", "resolved")
    assert firing["fingerprint"] == resolved["fingerprint"]
    assert firing["id"] != resolved["id"]


async def test_delivered_through_a_real_webhook() -> None:
    async with WebhookReceiver() as receiver:
        result = await send_test(config(hook(receiver.url)), "hook", build_sink, timeout=10)
    assert (result.delivered, result.reason) == (True, None)
    bodies = [r.json() for r in receiver.requests]
    assert [(b["id"], b["event"], b["rule"]) for b in bodies] == [
        (result.alert_ids[0], "firing", TEST_RULE),
        (result.alert_ids[1], "resolved", TEST_RULE),
    ]


async def test_only_the_firing_alert_when_the_sink_skips_resolved() -> None:
    async with WebhookReceiver() as receiver:
        result = await send_test(
            config(hook(receiver.url, send_resolved=False)), "hook", build_sink, timeout=10
        )
    assert result.delivered
    assert [r.json()["event"] for r in receiver.requests] == ["firing"]


async def test_retried_like_the_daemon_would() -> None:
    async with WebhookReceiver(Reply(503), Reply(429, headers={"Retry-After": "0"})) as receiver:
        result = await send_test(config(hook(receiver.url)), "hook", build_sink, timeout=10)
    assert result.delivered
    assert len(receiver.requests) == 4


async def test_a_rejected_alert_is_reported_with_the_reason() -> None:
    async with WebhookReceiver(default=Reply(400, body=b"no such channel")) as receiver:
        result = await send_test(config(hook(receiver.url)), "hook", build_sink, timeout=10)
    assert not result.delivered
    assert result.reason is not None
    assert result.reason.startswith("rejected, will not be retried:")
    assert "400" in result.reason
    assert len(receiver.requests) == 2  # each tried once: a dead letter is never retried


async def test_a_sink_that_keeps_failing_is_reported_after_the_timeout() -> None:
    async with WebhookReceiver(default=Reply(503)) as receiver:
        result = await send_test(config(hook(receiver.url)), "hook", build_sink, timeout=0.3)
    assert not result.delivered
    assert result.reason is not None
    assert result.reason.startswith("not delivered within 0.3s; last error:")
    assert "503" in result.reason


async def test_unknown_sink_names_the_configured_ones() -> None:
    with pytest.raises(ValueError, match="configured sinks: hook"):
        await send_test(config(hook("https://hooks.example/x")), "slack", build_sink)


async def test_delivered_through_a_real_broker_and_leaves_nothing_retained() -> None:
    async with Mosquitto() as broker:
        cfg = config({"type": "mqtt", "name": "mq", "url": broker.url})
        async with subscribe(broker.port, ["balwatch/alerts/#"]) as events:
            result = await send_test(cfg, "mq", build_sink, timeout=10)
            received = await events.drain()
        async with subscribe(broker.port, ["balwatch/active/#"]) as late:
            retained = await late.drain()
    assert result.delivered
    assert [m.topic.value for m in received] == ["balwatch/alerts/balwatch-test/send-test/-/-"] * 2
    assert retained == []


async def test_a_chat_sink_gets_the_test_at_once_not_after_its_group_wait() -> None:
    """A chat sink groups (group_wait 30s by default): the test proves the URL and format
    without that wait, firing and resolve each its own message, paced as the service asks."""
    async with ChatService("slack") as slack:
        cfg = config(hook(slack.url, format="slack"))
        result = await send_test(cfg, "hook", build_sink, timeout=5)
    assert (result.delivered, result.reason) == (True, None)
    assert [m["text"].split(" ", 1)[1] for m in slack.messages] == [
        "FIRING info: balwatch-test",
        "RESOLVED info: balwatch-test",
    ]
