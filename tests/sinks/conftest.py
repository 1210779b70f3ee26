"""Sample alert (the documented one), config builders and a running broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from balwatch.config.model import MqttSinkConfig, WebhookSinkConfig
from tests.brokers import Mosquitto

ALERT: dict[str, Any] = {
    "version": 1,
    "id": "0b6c5e4e-5d5f-4b7e-9d43-0e3f2c1a7b11",
    "fingerprint": "5f2b8c1d9e0a7f36",
    "status": "firing",
    "event": "firing",
    "rule": "low-available",
    "severity": "critical",
    "account": "bitso-treasury",
    "exchange": "bitso",
    "venue": "bitso",
    "asset": "USDT",
    "summary": "bitso-treasury USDT: only 4210.55 available",
    "description": "Hot wallet running low",
    "labels": {"team": "treasury"},
    "expression": "available < 5000",
    "values": {"available": "4210.55"},
    "started_at": "2026-11-25T10:00:00Z",
    "resolved_at": None,
    "observed_at": "2026-11-25T10:02:00Z",
}


def alert(**changes: Any) -> dict[str, Any]:
    """The sample alert with some fields changed."""
    return {**ALERT, **changes}


def resolved(doc: dict[str, Any], id: str) -> dict[str, Any]:
    """The resolve notification that follows ``doc``."""
    return {
        **doc,
        "id": id,
        "status": "resolved",
        "event": "resolved",
        "resolved_at": "2026-11-25T10:30:00Z",
    }


def mqtt_config(url: str, **fields: Any) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate({"type": "mqtt", "name": "ops-mqtt", "url": url, **fields})


def webhook_config(url: str, **fields: Any) -> WebhookSinkConfig:
    return WebhookSinkConfig.model_validate(
        {"type": "webhook", "name": "ops-hook", "url": url, **fields}
    )


@pytest.fixture
async def broker() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as running:
        yield running
