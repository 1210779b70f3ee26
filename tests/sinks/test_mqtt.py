"""The MQTT sink against a real Mosquitto: topics, retained state, status, QoS, v5, TLS, outages."""

from __future__ import annotations

import asyncio
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from balwatch.sink import DeliveryError
from balwatch.sinks.formats import encode_alert
from balwatch.sinks.mqtt import (
    CLEAR_V1_ACTIVE,
    RETAINED_ONLY,
    SET_ACTIVE,
    MqttSink,
    _v5_properties,
    topic_segment,
)
from tests.brokers import Mosquitto, free_port, make_tls_files, subscribe
from tests.sinks.conftest import ALERT, alert, mqtt_config, resolved

EVENTS = "balwatch/alerts/low-available/bitso-treasury/bitso/USDT"
ACTIVE = "balwatch/active/low-available/bitso-treasury/bitso/USDT"


def fast(url: str, **fields: Any) -> MqttSink:
    """A sink that reconnects within a fraction of a second, so outage tests stay short."""
    return MqttSink(mqtt_config(url, **fields), reconnect_min=0.05, reconnect_max=0.2)


def body(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes)
    return message.payload


def prop(message: aiomqtt.Message, name: str) -> Any:
    """A v5 property of a received message, None when absent (paho sets them as attributes)."""
    return getattr(message.properties, name, None)


def by_topic(messages: list[aiomqtt.Message]) -> dict[str, list[aiomqtt.Message]]:
    grouped: dict[str, list[aiomqtt.Message]] = {}
    for message in messages:
        grouped.setdefault(message.topic.value, []).append(message)
    return grouped


async def test_event_and_active_topics_carry_the_alert_json(broker: Mosquitto) -> None:
    topics = ["balwatch/alerts/#", "balwatch/active/#"]
    async with subscribe(broker.port, topics) as sub, fast(broker.url) as sink:
        await sink.send(ALERT)
        received = by_topic(await sub.drain())
    assert set(received) == {EVENTS, ACTIVE}
    for topic in (EVENTS, ACTIVE):
        [message] = received[topic]
        assert body(message) == encode_alert(ALERT)
        assert json.loads(body(message)) == ALERT


async def test_late_subscriber_sees_exactly_the_firing_alerts(broker: Mosquitto) -> None:
    usdt = ALERT
    mxn = alert(id="id-mxn", fingerprint="fp-mxn", asset="MXN")
    stale = alert(
        id="id-stale",
        fingerprint="fp-stale",
        rule="account-stale",
        venue=None,
        asset=None,
        values={},
    )
    async with fast(broker.url) as sink:
        for doc in (usdt, mxn, stale, resolved(usdt, id="id-usdt-resolved")):
            await sink.send(doc)

    async with subscribe(broker.port, ["balwatch/active/#"]) as late:
        retained = await late.drain()
    assert {m.topic.value: json.loads(body(m)) for m in retained} == {
        "balwatch/active/low-available/bitso-treasury/bitso/MXN": mxn,
        "balwatch/active/account-stale/bitso-treasury/-/-": stale,
    }
    assert all(m.retain for m in retained)


async def test_one_asset_on_two_venues_has_two_active_topics(broker: Mosquitto) -> None:
    """A CoinAPI account holds BTC on two venues: resolving one leaves the other firing."""
    binance, kraken = (
        alert(
            id=f"id-{venue}",
            fingerprint=f"fp-{venue}",
            rule="aml-lock",
            account="coinapi-ems",
            exchange="coinapi",
            venue=venue,
            asset="BTC",
        )
        for venue in ("BINANCESPOT", "KRAKEN")
    )
    async with fast(broker.url) as sink:
        await sink.send(binance)
        await sink.send(kraken)
        await sink.send(resolved(binance, id="id-binance-resolved"))
    async with subscribe(broker.port, ["balwatch/active/#"]) as late:
        retained = await late.drain()
    assert [(m.topic.value, json.loads(body(m))) for m in retained] == [
        ("balwatch/active/aml-lock/coinapi-ems/KRAKEN/BTC", kraken)
    ]


async def test_upkeep_documents_touch_only_retained_active_topics(broker: Mosquitto) -> None:
    """What a topic-layout upgrade sends: a layout-1 topic cleared, the alert retained on its
    layout-2 topic without an event on alerts/, and with the key that said so left out."""
    old = "balwatch/active/low-available/bitso-treasury/USDT"
    async with aiomqtt.Client("127.0.0.1", broker.port) as old_daemon:
        await old_daemon.publish(old, encode_alert(ALERT), qos=1, retain=True)
    async with (
        fast(broker.url) as sink,
        subscribe(broker.port, ["balwatch/alerts/#", "balwatch/active/#"]) as sub,
    ):
        assert [m.topic.value for m in await sub.drain()] == [old]
        await sink.send({**ALERT, RETAINED_ONLY: CLEAR_V1_ACTIVE})
        await sink.send({**ALERT, RETAINED_ONLY: SET_ACTIVE})
        live = await sub.drain()
    assert [(m.topic.value, body(m)) for m in live] == [(old, b""), (ACTIVE, encode_alert(ALERT))]
    async with subscribe(broker.port, ["balwatch/#"]) as late:
        retained = {m.topic.value: body(m) for m in await late.drain()}
    assert retained == {"balwatch/status": b"offline", ACTIVE: encode_alert(ALERT)}


async def test_resolve_publishes_the_event_then_clears_active(broker: Mosquitto) -> None:
    async with fast(broker.url) as sink:
        await sink.send(ALERT)
        async with subscribe(broker.port, ["balwatch/#"]) as sub:
            assert [m.topic.value for m in await sub.drain()] == ["balwatch/status", ACTIVE]
            done = resolved(ALERT, id="id-resolved")
            await sink.send(done)
            live = await sub.drain()
    assert [(m.topic.value, body(m)) for m in live] == [
        (EVENTS, encode_alert(done)),
        (ACTIVE, b""),
    ]


async def test_without_send_resolved_a_resolve_only_clears_active(broker: Mosquitto) -> None:
    """No resolved event goes out, yet a late subscriber must not see the alert as firing."""
    async with fast(broker.url, send_resolved=False) as sink:
        await sink.send(ALERT)
        async with subscribe(broker.port, ["balwatch/alerts/#", "balwatch/active/#"]) as sub:
            assert [m.topic.value for m in await sub.drain()] == [ACTIVE]
            await sink.send(resolved(ALERT, id="id-resolved"))
            live = await sub.drain()
    assert [(m.topic.value, body(m)) for m in live] == [(ACTIVE, b"")]
    async with subscribe(broker.port, ["balwatch/active/#"]) as late:
        assert await late.drain() == []


def test_topic_segments_cannot_split_or_wildcard() -> None:
    assert topic_segment("a/b+c#d") == "a_b_c_d"
    assert topic_segment("tab\there\x00nul\x7f\u0085") == "tab_here_nul__"
    assert topic_segment("") == "_"
    assert topic_segment(None) == "_"
    assert topic_segment("ünïcode-ok.1") == "ünïcode-ok.1"
    # Noncharacters: MQTT lets a broker call them malformed, and Mosquitto disconnects.
    assert topic_segment("A\ufdd0B\ufffeC\uffffD\U0001fffeE\U0010ffff") == "A_B_C_D_E_"
    sink = MqttSink(mqtt_config("mqtt://127.0.0.1", topic_prefix="corp/balwatch"))
    assert sink.topics(alert(rule="r/1", account="a+b", venue="x/y", asset="#")) == (
        "corp/balwatch/alerts/r_1/a_b/x_y/_",
        "corp/balwatch/active/r_1/a_b/x_y/_",
    )
    account_scope = alert(venue=None, asset=None)
    assert sink.topics(account_scope)[1] == "corp/balwatch/active/low-available/bitso-treasury/-/-"


async def test_status_online_while_connected_and_offline_after_clean_stop(
    broker: Mosquitto,
) -> None:
    async with subscribe(broker.port, ["balwatch/status"]) as sub:
        sink = fast(broker.url)
        await sink.start()
        assert body(await sub.get()) == b"online"
        await sink.close()
        assert body(await sub.get()) == b"offline"
    async with subscribe(broker.port, ["balwatch/status"]) as late:
        [status] = await late.drain()
    assert (body(status), status.retain) == (b"offline", True)


_CRASHING_DAEMON = """
import asyncio, sys
from balwatch.sinks.mqtt import MqttSink
from tests.sinks.conftest import mqtt_config

async def main() -> None:
    await MqttSink(mqtt_config(sys.argv[1])).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_will_publishes_offline_when_the_process_dies(broker: Mosquitto) -> None:
    async with subscribe(broker.port, ["balwatch/status"]) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CRASHING_DAEMON, broker.url, cwd=Path(__file__).parents[2]
        )
        try:
            assert body(await sub.get(timeout=20)) == b"online"
        finally:
            child.kill()
            await child.wait()
        assert body(await sub.get()) == b"offline"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publishes_at_the_configured_qos(broker: Mosquitto, protocol: str, qos: int) -> None:
    docs = [alert(id=f"id-{n}", asset=f"A{n}") for n in range(50)]
    async with subscribe(broker.port, ["balwatch/alerts/#"], qos=2) as sub:
        async with fast(broker.url, qos=qos, protocol=protocol) as sink:
            await asyncio.gather(*(sink.send(doc) for doc in docs))
        # QoS 0 has no acknowledgement to wait for; the others are in before drain's marker.
        messages = [await sub.get() for _ in docs]
    assert sorted(json.loads(body(m))["id"] for m in messages) == sorted(d["id"] for d in docs)
    assert {m.qos for m in messages} == {qos}


@pytest.mark.parametrize(
    ("protocol", "broker_limit"),
    [("3.1.1", "20"), ("5", "5")],  # v3.1.1 cannot announce a limit: 20 is the default
)
async def test_a_burst_at_qos2_keeps_every_retained_alert(protocol: str, broker_limit: str) -> None:
    """Mosquitto acknowledges but drops QoS 2 publishes beyond its in-flight limit, which
    it announces to v5 clients only: the sink must stay within it."""
    docs = [alert(id=f"id-{n}", asset=f"A{n}") for n in range(300)]
    async with Mosquitto(extra_config=f"max_inflight_messages {broker_limit}\n") as broker:
        async with fast(broker.url, qos=2, protocol=protocol) as sink:
            await asyncio.gather(*(sink.send(doc) for doc in docs))
        async with subscribe(broker.port, ["balwatch/active/#"]) as late:
            retained = await late.drain()
    assert len(retained) == len(docs)


async def test_retained_active_alerts_do_not_expire_by_default(broker: Mosquitto) -> None:
    async with subscribe(broker.port, ["balwatch/active/#"]) as sub, fast(broker.url) as sink:
        await sink.send(ALERT)
        [active] = await sub.drain()
    assert prop(active, "MessageExpiryInterval") is None


async def test_v5_user_properties_and_expiry_on_active(broker: Mosquitto) -> None:
    async with (
        subscribe(broker.port, ["balwatch/alerts/#", "balwatch/active/#"]) as sub,
        fast(broker.url, protocol="5", active_expiry="1h") as sink,
    ):
        await sink.send(ALERT)
        received = by_topic(await sub.drain())
    [event], [active] = received[EVENTS], received[ACTIVE]
    expected = [
        ("rule", "low-available"),
        ("severity", "critical"),
        ("fingerprint", "5f2b8c1d9e0a7f36"),
    ]
    for message in (event, active):
        assert prop(message, "UserProperty") == expected
        assert prop(message, "ContentType") == "application/json"
    assert prop(event, "MessageExpiryInterval") is None
    assert 3590 <= prop(active, "MessageExpiryInterval") <= 3600


@pytest.mark.parametrize("expiry", [None, 604800])
def test_v5_properties_pack_as_paho_packs_them(expiry: int | None) -> None:
    """The bytes are assembled from a per-rule part; they must be paho's own, exactly."""
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    reference.PayloadFormatIndicator = 1
    reference.ContentType = "application/json"
    reference.UserProperty = [("rule", "r"), ("severity", "critical"), ("fingerprint", "fp")]
    if expiry is not None:
        reference.MessageExpiryInterval = expiry
    made = _v5_properties("r", "critical", "fp", expiry)
    assert made.pack() == reference.pack()
    assert made.json() == reference.json()  # what paho's debug log would show


def test_properties_memory_does_not_grow_with_fingerprints() -> None:
    """Every new fingerprint used to add a 6.5 KB cache entry: a slow climb over weeks."""
    _v5_properties("r", "critical", "warm-up", None)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            _v5_properties("r", "critical", f"fingerprint-{i}", None).pack()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown} bytes kept after 2,000 fingerprints"


async def test_v311_sends_no_properties(broker: Mosquitto) -> None:
    async with (
        subscribe(broker.port, ["balwatch/active/#"]) as sub,
        fast(broker.url, protocol="3.1.1") as sink,
    ):
        await sink.send(ALERT)
        [active] = await sub.drain()
    assert prop(active, "UserProperty") is None


async def test_v5_receive_maximum_limits_publishes_in_flight() -> None:
    async with (
        Mosquitto(extra_config="max_inflight_messages 5\n") as broker,
        fast(broker.url, protocol="5") as sink,
    ):
        await sink.send(ALERT)
        connection = sink._connection
        assert connection is not None
        assert connection._client.max_inflight_messages == 5


async def test_v5_refused_publish_is_a_dead_letter() -> None:
    acl = "topic readwrite balwatch/status\ntopic readwrite balwatch/alerts/#\n"
    async with Mosquitto(acl=acl) as broker, fast(broker.url, protocol="5") as sink:
        with pytest.raises(DeliveryError) as caught:
            await sink.send(ALERT)
    assert caught.value.retryable is False
    assert "Not authorized" in str(caught.value)


async def test_username_and_password_from_the_url() -> None:
    password = "pw-Zq7!x:y@z"  # needs percent-encoding in a URL
    users = {"balwatch": password, "bot": "bot-pw"}
    async with Mosquitto(users=users) as broker:
        url = f"mqtt://balwatch:pw-Zq7%21x%3Ay%40z@127.0.0.1:{broker.port}"
        with capture_logs() as logs:
            async with (
                subscribe(
                    broker.port, ["balwatch/alerts/#"], username="bot", password="bot-pw"
                ) as sub,
                fast(url) as sink,
            ):
                await sink.send(ALERT)
                [message] = await sub.drain()
    assert json.loads(body(message)) == ALERT
    assert logs == [
        {
            "event": "mqtt_connected",
            "sink": "ops-mqtt",
            "broker": f"mqtt://127.0.0.1:{broker.port}/",
            "log_level": "info",
        }
    ]


async def test_wrong_password_fails_without_revealing_it() -> None:
    password = "wrong-pw-4f9c2e"
    async with Mosquitto(users={"balwatch": "right"}) as broker:
        with capture_logs() as logs:
            async with fast(f"mqtt://balwatch:{password}@127.0.0.1:{broker.port}") as sink:
                with pytest.raises(DeliveryError) as caught:
                    await sink.send(ALERT)
    assert caught.value.retryable is True
    assert password not in str(caught.value)
    assert logs, "the failed connection is logged"
    assert password not in repr(logs)
    assert any("authori" in str(entry.get("error", "")).lower() for entry in logs)


async def test_broker_down_fails_fast_then_recovers_and_republishes_online(
    broker: Mosquitto,
) -> None:
    async with fast(broker.url, keepalive="2s") as sink:
        await sink.send(ALERT)
        await broker.stop()
        with pytest.raises(DeliveryError) as caught:
            async with asyncio.timeout(2):
                await sink.send(ALERT)
        assert caught.value.retryable is True
        with pytest.raises(DeliveryError):  # known down now: fails at once
            async with asyncio.timeout(0.5):
                await sink.send(ALERT)

        await broker.start()  # not persistent: nothing retained survived the restart
        async with subscribe(broker.port, ["balwatch/status", "balwatch/active/#"]) as sub:
            assert body(await sub.get(timeout=10)) == b"online"
            await sink.send(ALERT)
            [active] = await sub.drain()
    assert active.topic.value == ACTIVE


async def test_retained_state_survives_a_persistent_broker_restart() -> None:
    async with Mosquitto(persistence=True) as broker:
        async with fast(broker.url) as sink:
            await sink.send(ALERT)
        await broker.stop()
        await broker.start()
        async with subscribe(broker.port, ["balwatch/#"]) as late:
            retained = {m.topic.value: body(m) for m in await late.drain()}
    assert retained == {"balwatch/status": b"offline", ACTIVE: encode_alert(ALERT)}


async def test_send_fails_fast_when_the_broker_never_came_up() -> None:
    async with fast(f"mqtt://127.0.0.1:{free_port()}") as sink:
        with pytest.raises(DeliveryError) as caught:
            async with asyncio.timeout(2):
                await sink.send(ALERT)
    assert caught.value.retryable is True
    assert "not connected" in str(caught.value)


async def test_send_before_start_is_retryable(broker: Mosquitto) -> None:
    with pytest.raises(DeliveryError) as caught:
        await fast(broker.url).send(ALERT)
    assert caught.value.retryable is True


async def test_mqtts_with_ca_file_and_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    async with Mosquitto(tls=tls) as broker:
        url = f"mqtts://127.0.0.1:{broker.tls_port}"
        certs = {"ca_file": str(tls.ca), "client_cert": str(tls.client_cert)}
        async with (
            subscribe(broker.port, ["balwatch/alerts/#"]) as sub,
            fast(url, **certs, client_key=str(tls.client_key)) as sink,
        ):
            await sink.send(ALERT)
            [message] = await sub.drain()
        assert json.loads(body(message)) == ALERT

        # Without a client certificate the broker ends the connection after the handshake
        # (TLS 1.3), which aiomqtt only notices when its CONNACK wait times out.
        config = mqtt_config(url, ca_file=str(tls.ca))
        async with MqttSink(config, connect_timeout=0.5, connect_wait=0.1) as refused:
            with pytest.raises(DeliveryError):
                await refused.send(ALERT)


async def test_mqtts_verifies_the_broker_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    async with Mosquitto(tls=tls) as broker:
        url = f"mqtts://127.0.0.1:{broker.tls_port}"
        client = {"client_cert": str(tls.client_cert), "client_key": str(tls.client_key)}
        with capture_logs() as logs:
            async with fast(url, **client) as sink:  # system CAs do not know the test CA
                with pytest.raises(DeliveryError):
                    await sink.send(ALERT)
    assert any("CERTIFICATE_VERIFY_FAILED" in str(entry.get("error")) for entry in logs)


async def test_an_asset_with_a_noncharacter_is_delivered_without_dropping_the_connection(
    broker: Mosquitto,
) -> None:
    """An exchange's asset code reaches the topic; one the broker calls malformed would
    drop the connection on every retry, and every alert in flight with it."""
    odd = alert(id="id-odd", fingerprint="fp-odd", asset="USDT\uffff")
    async with fast(broker.url) as sink, subscribe(broker.port, ["balwatch/alerts/#"]) as sub:
        await asyncio.gather(sink.send(odd), sink.send(ALERT))
        topics = sorted(m.topic.value for m in await sub.drain())
    assert topics == [EVENTS, "balwatch/alerts/low-available/bitso-treasury/bitso/USDT_"]


async def test_a_topic_past_the_mqtt_limit_is_a_dead_letter(broker: Mosquitto) -> None:
    async with fast(broker.url) as sink:
        with pytest.raises(DeliveryError) as caught:
            await sink.send(alert(asset="A" * 70_000))
        await sink.send(ALERT)  # the connection is still good
    assert caught.value.retryable is False


async def test_an_alert_that_is_not_json_is_a_dead_letter(broker: Mosquitto) -> None:
    async with fast(broker.url) as sink:
        with pytest.raises(DeliveryError) as caught:
            await sink.send(alert(values={"available": object()}))
    assert caught.value.retryable is False
