"""Alerts of a group (portfolio rules) in the sinks: MQTT topics with ``-`` for what the
group lacks and a level for its other keys (real Mosquitto), and the chat text."""

from __future__ import annotations

import json
from typing import Any

from balwatch.sink import AlertGroup
from balwatch.sinks.formats import chat_group_payload, chat_payload
from balwatch.sinks.mqtt import MqttSink
from tests.brokers import Mosquitto, subscribe
from tests.sinks.conftest import alert, mqtt_config


def group_alert(group: dict[str, str | None], **fields: Any) -> dict[str, Any]:
    return alert(
        rule="floor",
        fingerprint=f"fp-{sorted(group.items())}",
        account=group.get("account"),
        exchange=group.get("exchange"),
        venue=group.get("venue"),
        asset=group.get("asset"),
        group=group,
        summary="USDT across the wallets: sum(available)=42000",
        values={"sum(available)": "42000", "USDT@bitso-hot": "30000", "USDT@kuna-hot": "12000"},
        **fields,
    )


def test_topics_have_a_dash_for_what_the_group_lacks_and_a_level_for_other_keys() -> None:
    sink = MqttSink(mqtt_config("mqtt://127.0.0.1:1"))
    assert sink.topics(group_alert({"asset": "USDT"})) == (
        "balwatch/alerts/floor/-/-/USDT",
        "balwatch/active/floor/-/-/USDT",
    )
    assert sink.topics(group_alert({"account": "bitso-hot"}))[0] == (
        "balwatch/alerts/floor/bitso-hot/-/-"
    )
    assert (
        sink.topics(group_alert({"desk": "payouts", "exchange": "bitso", "asset": "USDT"}))[1]
        == "balwatch/active/floor/-/-/USDT/desk=payouts,exchange=bitso"
    )
    assert sink.topics(group_alert({"desk": None}))[0] == "balwatch/alerts/floor/-/-/-/desk=-"
    assert sink.topics(group_alert({"venue": "KRAKEN"}))[0] == "balwatch/alerts/floor/-/KRAKEN/-"
    assert sink.topics(group_alert({}))[0] == "balwatch/alerts/floor/-/-/-"


async def test_two_groups_of_one_rule_never_share_a_retained_topic(broker: Mosquitto) -> None:
    bitso = group_alert({"exchange": "bitso"}, id="id-bitso")
    kuna = group_alert({"exchange": "kunacore"}, id="id-kuna")
    async with MqttSink(mqtt_config(broker.url)) as sink:
        await sink.send(bitso)
        await sink.send(kuna)
    async with subscribe(broker.port, ["balwatch/active/#"]) as late:
        retained = {m.topic.value: m.payload for m in await late.drain()}
    assert {topic: json.loads(payload) for topic, payload in retained.items()} == {
        "balwatch/active/floor/-/-/-/exchange=bitso": bitso,
        "balwatch/active/floor/-/-/-/exchange=kunacore": kuna,
    }


def test_chat_names_the_group_and_lists_the_rows_that_weigh_most() -> None:
    text = chat_payload("mattermost", group_alert({"asset": "USDT"}))["text"]
    # What a reader sees: the zero-width space that keeps "@bitso-hot" from pinging is not.
    assert text.replace("\u200b", "").splitlines() == [
        "🔴 **FIRING** critical: **floor**",
        "USDT across the wallets: sum(available)=42000",
        "Hot wallet running low",
        "Group: asset=USDT",
        "sum(available): 42000",
        "USDT@bitso-hot: 30000",
        "USDT@kuna-hot: 12000",
        "Since: 2026-11-25T10:00:00Z",
    ]
    [attachment] = chat_payload("slack", group_alert({"asset": "USDT"}))["attachments"]
    assert attachment["fields"][0] == {"title": "Group", "value": "asset=USDT", "short": True}


def test_a_group_message_names_each_portfolio_group_as_its_card_does() -> None:
    """One line per group alert, named by its group (``-`` for a missing label, ``all``
    for ``group_by: []``), never by the account, venue and asset it lacks."""
    docs = [
        group_alert({"asset": "USDT"}, id="1"),
        group_alert({"desk": None, "exchange": "bitso"}, id="2", severity="warning"),
        group_alert({}, id="3"),
    ]
    message = AlertGroup("m1", {"rule": "floor"}, docs)
    lines = chat_group_payload("mattermost", message)["text"].splitlines()
    assert lines == [
        "**🔴 FIRING 3: floor**",
        "🔴 asset=USDT: USDT across the wallets: sum(available)=42000",
        "🟠 desk=- exchange=bitso: USDT across the wallets: sum(available)=42000",
        "🔴 all: USDT across the wallets: sum(available)=42000",
    ]
