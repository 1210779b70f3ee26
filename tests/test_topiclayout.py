"""The one-time move of retained MQTT alerts to the venue-segment topic layout, against a
real Mosquitto and the real outbox in SQLite (the daemon's side is in tests/test_daemon.py)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from balwatch.alert import Alert, fingerprint, group_fingerprint, placed
from balwatch.config.model import MqttSinkConfig, SinkConfig, WebhookSinkConfig
from balwatch.outbox.worker import Outbox
from balwatch.rules.engine import AlertState
from balwatch.sinks.formats import encode_alert
from balwatch.sinks.mqtt import MqttSink
from balwatch.state.base import AlertCommit, RoutedAlert, SavedState
from balwatch.state.sqlite import DB_FILE, SqliteStateStore
from balwatch.topiclayout import MARKER, upgrade_topic_layout
from tests.brokers import Mosquitto, subscribe

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
OLD_ACTIVE = "balwatch/active/low-available/treasury/USDT"
NEW_ACTIVE = "balwatch/active/low-available/treasury/bitso/USDT"


def low_alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "fingerprint": fingerprint("low-available", "treasury", "bitso", "USDT"),
        "event": "firing",
        "rule": "low-available",
        "severity": "critical",
        "account": "treasury",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "summary": "treasury USDT: only 3000 available",
        "description": "",
        "labels": {},
        "expression": "available < 5000",
        "values": {},
        "started_at": T0,
        "observed_at": T0,
        **changes,
    }
    return placed(Alert(**fields), "host-a", None)  # type: ignore[arg-type]


async def load(state_dir: Path) -> SavedState:
    """What a start reads from the state directory."""
    async with SqliteStateStore(state_dir) as store:
        return await store.load(0)


async def opened(state_dir: Path) -> SqliteStateStore:
    store = SqliteStateStore(state_dir)
    await store.open()
    return store


async def saved_firing(state_dir: Path, alert: Alert) -> SavedState:
    """What the state database of the balwatch before the upgrade held: ``alert`` firing."""
    saved = await load(state_dir)
    saved.alerts.append(
        AlertState(
            fingerprint=alert.fingerprint,
            rule=alert.rule,
            when=alert.expression,
            clear=None,
            severity=alert.severity,
            account=alert.account,
            exchange=alert.exchange,
            venue=alert.venue,
            asset=alert.asset,
            phase="firing",
            since=alert.started_at.timestamp(),
            group=None if alert.group is None else dict(alert.group),
        )
    )
    return saved


def mqtt_sink(url: str, name: str = "ops-mqtt", **fields: object) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate({"type": "mqtt", "name": name, "url": url, **fields})


async def retain_old(port: int, *topics: str) -> None:
    """What the balwatch before the venue segment left on the broker."""
    async with aiomqtt.Client("127.0.0.1", port) as old_daemon:
        for topic in topics:
            await old_daemon.publish(topic, b'{"old": true}', qos=1, retain=True)


async def retained(port: int) -> dict[str, bytes]:
    async with subscribe(port, ["balwatch/#"]) as late:
        return {
            m.topic.value: m.payload
            for m in await late.drain()
            if isinstance(m.payload, bytes) and m.topic.value != "balwatch/status"
        }


@contextlib.asynccontextmanager
async def delivering(store: SqliteStateStore, sinks: Sequence[SinkConfig]) -> AsyncIterator[Outbox]:
    """The MQTT sinks' outbox workers, as the daemon starts them."""
    async with contextlib.AsyncExitStack() as stack:
        running = [
            await stack.enter_async_context(MqttSink(s, reconnect_min=0.05, reconnect_max=0.2))
            for s in sinks
            if isinstance(s, MqttSinkConfig)
        ]
        outbox = Outbox(store, running)
        await outbox.start()
        try:
            yield outbox
        finally:
            await outbox.stop()


def marker(state_dir: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(state_dir / DB_FILE)) as conn:
        rows: list[tuple[str, int]] = conn.execute("SELECT * FROM state_marker").fetchall()
        return rows


async def test_a_resolve_still_in_the_outbox_has_its_old_topic_cleared(tmp_path: Path) -> None:
    """The alert resolved before the upgrade but the resolve was not delivered yet: the state
    no longer names the alert, the outbox does."""
    state = tmp_path / "state"
    saved = await load(state)
    async with Mosquitto() as broker:
        await retain_old(broker.port, OLD_ACTIVE)
        sinks = [mqtt_sink(broker.url)]
        store = await opened(state)
        try:
            done = low_alert(event="resolved", resolved_at=T0)
            await store.commit(AlertCommit([RoutedAlert(done.to_json(), ["ops-mqtt"])]))
            await upgrade_topic_layout(store, sinks, saved, [])
            async with delivering(store, sinks) as outbox:
                await outbox.wait_settled()
        finally:
            await store.close()
        assert await retained(broker.port) == {}
    assert marker(state) == [("mqtt_topic_layout", 2)]


async def test_an_upgrade_a_broker_outage_cut_short_completes_from_the_outbox(
    tmp_path: Path,
) -> None:
    """The moves are committed with the marker: what a stop left undelivered goes out at
    the next start, and the next start adds no second move."""
    state = tmp_path / "state"
    firing = low_alert()
    saved = await saved_firing(state, firing)
    async with Mosquitto(persistence=True) as broker:
        await retain_old(broker.port, OLD_ACTIVE)
        await broker.stop()
        sinks = [mqtt_sink(broker.url)]
        store = await opened(state)
        try:
            await upgrade_topic_layout(store, sinks, saved, [firing])
            async with delivering(store, sinks):
                pass  # the broker is down: nothing is delivered, everything stays pending
            assert (await store.counts())["ops-mqtt"].pending == 2
        finally:
            await store.close()

        again = await load(state)
        assert again.markers == {MARKER: 2}
        await broker.start()
        store = await opened(state)
        try:
            await upgrade_topic_layout(store, sinks, again, [firing])
            assert (await store.counts())["ops-mqtt"].pending == 2, "no second move"
            async with delivering(store, sinks) as outbox:
                await outbox.wait_settled()
        finally:
            await store.close()
        assert await retained(broker.port) == {NEW_ACTIVE: encode_alert(firing.to_json())}


async def test_only_sinks_that_got_the_alert_retain_it_and_webhooks_get_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    warning = low_alert(severity="warning")
    saved = await saved_firing(state, warning)
    async with Mosquitto() as broker:
        await retain_old(broker.port, OLD_ACTIVE, OLD_ACTIVE.replace("balwatch/", "quiet/"))
        sinks: list[SinkConfig] = [
            mqtt_sink(broker.url),
            mqtt_sink(broker.url, name="quiet-mqtt", topic_prefix="quiet", min_severity="critical"),
            WebhookSinkConfig.model_validate(
                {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/never"}
            ),
        ]
        store = await opened(state)
        try:
            await upgrade_topic_layout(store, sinks, saved, [warning])
            counts = await store.counts()
            assert {name: c.pending for name, c in counts.items()} == {
                "ops-mqtt": 2,  # clear the old topic, retain on the new
                "quiet-mqtt": 1,  # clear only: it never got warnings
            }
            async with delivering(store, sinks) as outbox:
                await outbox.wait_settled()
        finally:
            await store.close()
        assert await retained(broker.port) == {NEW_ACTIVE: encode_alert(warning.to_json())}


async def test_a_groups_alert_has_no_old_topic_and_is_retained_on_its_own(
    tmp_path: Path,
) -> None:
    """Portfolio rules came with the venue segment: nothing of layout 1 to clear for their
    alerts (no stray topic is published), and a firing one is retained on its topic."""
    state = tmp_path / "state"
    group = {"asset": "USDT"}
    floor = low_alert(
        fingerprint=group_fingerprint("usdt-floor", group),
        rule="usdt-floor",
        account=None,
        exchange=None,
        venue=None,
        group=group,
    )
    saved = await saved_firing(state, floor)
    async with Mosquitto() as broker:
        await retain_old(broker.port, OLD_ACTIVE)
        sinks = [mqtt_sink(broker.url)]
        store = await opened(state)
        try:
            # its repeat is still in the outbox, too
            await store.commit(AlertCommit([RoutedAlert(floor.to_json(), ["ops-mqtt"])]))
            await upgrade_topic_layout(store, sinks, saved, [floor])
            pending = await store.pending("ops-mqtt")
            # the repeat, then one upkeep: a retain, no clear
            assert [d.alert.get("mqtt_retained_only") for d in pending] == [None, "set_active"]
            async with delivering(store, sinks) as outbox:
                await outbox.wait_settled()
        finally:
            await store.close()
        assert await retained(broker.port) == {
            OLD_ACTIVE: b'{"old": true}',  # not this installation's alert: left alone
            "balwatch/active/usdt-floor/-/-/USDT": encode_alert(floor.to_json()),
        }


async def test_a_new_installation_records_the_layout_and_sends_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    saved = await load(state)
    store = await opened(state)
    try:
        await upgrade_topic_layout(store, [mqtt_sink("mqtt://127.0.0.1:9")], saved, [])
        assert await store.counts() == {}
    finally:
        await store.close()
    assert marker(state) == [("mqtt_topic_layout", 2)]
    assert (await load(state)).markers == {MARKER: 2}
