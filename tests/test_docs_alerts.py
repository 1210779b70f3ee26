"""docs/alerts.md holds to what balwatch sends.

Its example document is a valid alert with a fingerprint and url balwatch would give it,
its key tables name every key of the alert document and of an alert state, the topics it
shows are the ones the MQTT sink computes, and its signature check, run as written,
accepts what balwatch's webhook sink signs and sends, and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from balwatch.alert import JSON_KEYS, alert_url, fingerprint, group_fingerprint
from balwatch.config.model import WebhookSinkConfig
from balwatch.rules.engine import AlertState
from balwatch.sinks.mqtt import topic_segment, topic_tail
from balwatch.sinks.webhook import SIGNATURE_HEADER, WebhookSink, sign
from tests.alertschema import schema_errors
from tests.docpages import blocks, page, spans, tables
from tests.webhooks import WebhookReceiver

PAGE = "alerts.md"
SECRET = "whsec-docs-0123456789"
Verify = Callable[..., bool]


def example() -> dict[str, Any]:
    (doc,) = blocks(page(PAGE), "json")
    loaded: dict[str, Any] = json.loads(doc.code)
    return loaded


def column(header: str) -> set[str]:
    """The code spans in the first column of the tables headed ``header``."""
    return {
        span
        for head, rows in tables(page(PAGE))
        if head[0] == header
        for row in rows
        for span in spans(row[0])
    }


def test_the_example_is_an_alert_balwatch_would_send() -> None:
    doc = example()
    assert schema_errors(doc) == []
    assert list(doc) == list(JSON_KEYS)
    assert doc["fingerprint"] == fingerprint(
        doc["rule"], doc["account"], doc["venue"], doc["asset"]
    )
    assert doc["url"] == alert_url("https://balwatch.example", doc["fingerprint"])


def test_every_key_of_the_alert_and_of_an_alert_state_has_a_row() -> None:
    assert column("key") == set(JSON_KEYS)
    assert column("state key") == {f.name for f in dataclasses.fields(AlertState)}


def test_the_topics_shown_are_the_sinks_topics() -> None:
    text = page(PAGE)
    tail = topic_tail(example())
    for kind in ("alerts", "active"):
        assert f"`balwatch/{kind}/{tail}`" in text
    account_scope = {**example(), "rule": "account-stale", "account": "coinw-spot"}
    account_scope |= {"venue": None, "asset": None}
    assert f"`balwatch/active/{topic_tail(account_scope)}`" in text
    assert "(`a/b+c` is `a_b_c`)" in text and topic_segment("a/b+c") == "a_b_c"


def test_a_portfolio_rules_topics_shown_are_the_sinks_topics() -> None:
    rows = next(rows for head, rows in tables(page(PAGE)) if head == ("`group_by`", "topic"))
    assert len(rows) >= 5
    for keys_cell, topic_cell in rows:
        keys = yaml.safe_load(spans(keys_cell)[0])
        (topic,) = spans(topic_cell)
        rule = topic.split("/")[2]
        values = {"exchange": "bitso", "desk": "payouts", "account": "bitso-hot"}
        values |= {"venue": "KRAKEN", "asset": "USDT"}
        group = {key: values[key] for key in keys}
        doc = {"rule": rule, "group": group, "exchange": group.get("exchange")}
        doc |= {key: group.get(key) for key in ("account", "venue", "asset")}
        assert topic == f"balwatch/alerts/{topic_tail(doc)}", keys
    assert group_fingerprint("usdt-floor", {"asset": "USDT"}) in page(PAGE)


@pytest.fixture
def verify() -> Verify:
    """The page's verification code, run as a receiver would paste it."""
    (code,) = blocks(page(PAGE), "python")
    namespace: dict[str, Any] = {}
    exec(compile(code.code, f"docs/{PAGE}", "exec"), namespace)  # noqa: S102
    function: Verify = namespace["verify"]
    return function


async def test_the_signature_check_accepts_what_balwatch_signs_and_sends(verify: Verify) -> None:
    async with WebhookReceiver() as hook:
        config = WebhookSinkConfig.model_validate(
            {"type": "webhook", "name": "audit", "url": hook.url, "secret": SECRET}
        )
        async with WebhookSink(config) as sink:
            await sink.send(example())
        (request,) = await hook.wait_for(1)
    header = request.headers[SIGNATURE_HEADER]
    assert verify(SECRET.encode(), header, request.body)
    assert request.json() == example()


def test_the_signature_check_refuses_anything_else(verify: Verify) -> None:
    body = json.dumps(example()).encode()
    now = int(time.time())
    assert verify(SECRET.encode(), sign(SECRET, now, body), body)
    assert not verify(SECRET.encode(), sign(SECRET, now, body), body.replace(b"4210", b"9210"))
    assert not verify(b"another secret", sign(SECRET, now, body), body)
    assert not verify(SECRET.encode(), sign(SECRET, now - 3600, body), body)
    stale = sign(SECRET, now - 3600, body)
    assert not verify(SECRET.encode(), stale.replace(f"t={now - 3600}", f"t={now}"), body)
    for header in ("", "garbage", "t=abc,v1=00", "v1=" + "0" * 64):
        assert not verify(SECRET.encode(), header, body)
