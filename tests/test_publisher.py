"""The commit path on its own: a real engine and a real SQLite store behind the outbox.

Faults come through the store interface: :class:`FaultyStore` is a real SQLite store whose
commits and flushes can be made to fail, or held in flight, as a full disk would fail or
hold them. What was committed is read back from the store itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from balwatch.alert import Alert
from balwatch.config.model import MqttSinkConfig
from balwatch.metrics import Metrics
from balwatch.model import Balance
from balwatch.outbox.worker import Outbox
from balwatch.publisher import AlertPublisher
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.selfalerts import SelfAlerts
from balwatch.silence import Silence
from balwatch.sink import AlertDoc
from balwatch.state.base import (
    AlertCommit,
    Changes,
    DeadLetter,
    Delivery,
    OnCommit,
    OutboxEntry,
    Retried,
    SavedState,
    SinkCounts,
    StateSnapshot,
    StateStore,
)
from balwatch.state.sqlite import SqliteStateStore
from tests.outbox.doubles import ScriptedSink

T0 = 1_800_000_000.0
WAIT = 10.0
LOW = Rule(name="low", when=parse_expression("available < 5000"), severity="warning")
SLOW = Rule(name="slow-low", when=parse_expression("available < 5000"), for_=600.0)


class DiskFull(OSError):
    def __init__(self) -> None:
        super().__init__(28, "No space left on device")


class FaultyStore(StateStore):
    """A real store; ``failing`` makes commits and flushes fail, a cleared ``gate`` holds
    commits in flight (``entered`` is set once one is)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    @property
    def location(self) -> str:
        return self.inner.location

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def load(self, since: float) -> SavedState:
        return await self.inner.load(since)

    async def commit(
        self, commit: AlertCommit, *, on_commit: OnCommit | None = None
    ) -> list[Delivery]:
        self.entered.set()
        await self.gate.wait()
        if self.failing:
            raise DiskFull()
        return await self.inner.commit(commit, on_commit=on_commit)

    async def flush(self, snapshot: StateSnapshot) -> None:
        if self.failing:
            raise DiskFull()
        await self.inner.flush(snapshot)

    async def ack_all(self, delivery_ids: Sequence[int]) -> None:
        await self.inner.ack_all(delivery_ids)

    async def fail_all(self, delivery_ids: Sequence[int], error: str, *, dead: bool) -> None:
        await self.inner.fail_all(delivery_ids, error, dead=dead)

    async def bundle(self, message: str, delivery_ids: Sequence[int]) -> None:
        await self.inner.bundle(message, delivery_ids)

    async def pending(self, sink: str) -> list[Delivery]:
        return await self.inner.pending(sink)

    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(sink)

    async def documents(self) -> list[AlertDoc]:
        return await self.inner.documents()

    async def counts(self) -> dict[str, SinkCounts]:
        return await self.inner.counts()

    async def outbox(self, *, dead_only: bool = False) -> list[OutboxEntry]:
        return await self.inner.outbox(dead_only=dead_only)

    async def retry_dead(self, ids: Sequence[int] | None = None) -> Retried:
        return await self.inner.retry_dead(ids)

    async def drop_dead(self, ids: Sequence[int]) -> list[int]:
        return await self.inner.drop_dead(ids)

    async def add_silence(self, silence: Silence) -> None:
        await self.inner.add_silence(silence)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        return await self.inner.expire_silence(silence_id, now)

    async def silences(self) -> list[Silence]:
        return await self.inner.silences()

    async def prune_silences(self, ended_before: float) -> int:
        return await self.inner.prune_silences(ended_before)

    async def changes(self) -> Changes:
        return await self.inner.changes()


def sink_config(name: str, **settings: object) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate(
        {"type": "mqtt", "name": name, "url": "mqtt://127.0.0.1:1", **settings}
    )


@dataclass
class Rig:
    publisher: AlertPublisher
    store: FaultyStore
    engine: Engine
    self_alerts: SelfAlerts
    metrics: Metrics
    handed: list[Alert]  # on_alerts, in order

    async def pending(self, sink: str = "mqtt") -> list[tuple[str, str]]:
        return [(d.fingerprint, d.alert["event"]) for d in await self.store.pending(sink)]

    async def saved(self) -> SavedState:
        return await self.store.load(0)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    engine = Engine([LOW, SLOW], clock=lambda: T0)
    self_alerts = SelfAlerts(lambda: T0)
    metrics = Metrics("test")
    handed: list[Alert] = []
    held = asyncio.Event()  # never set: deliveries stay pending, for the store to show
    sinks = [ScriptedSink("mqtt", gate=held), ScriptedSink("pager", gate=held)]
    async with FaultyStore(SqliteStateStore(tmp_path / "state")) as store:
        outbox = Outbox(store, sinks)
        await outbox.start()
        publisher = AlertPublisher(
            store=store,
            outbox=outbox,
            engine=engine,
            self_alerts=self_alerts,
            sinks=[sink_config("mqtt"), sink_config("pager", min_severity="critical")],
            metrics=metrics,
            placement=("treasury-test", None),
            on_alerts=handed.extend,
        )
        try:
            yield Rig(publisher, store, engine, self_alerts, metrics, handed)
        finally:
            await outbox.stop()


def observe(engine: Engine, available: str, asset: str = "USDT", at: float = 0) -> list[Alert]:
    row = Balance("treasury", "bitso", "bitso", asset, asset.lower(), available=Decimal(available))
    return engine.observe("treasury", "bitso", [row], T0 + at)


def events(alerts: Sequence[Alert]) -> list[tuple[str | None, str]]:
    return [(a.asset, a.event) for a in alerts]


async def test_alerts_commit_with_their_states_and_are_handed_on(rig: Rig) -> None:
    [fired] = observe(rig.engine, "4000")
    await rig.publisher.publish([fired])

    assert [a.id for a in rig.handed] == [fired.id]
    assert await rig.pending() == [(fired.fingerprint, "firing")]
    assert await rig.pending("pager") == []  # a warning: below the pager's min_severity
    # The firing state is on disk with its alert, before any flush.
    assert [(s.rule, s.phase) for s in (await rig.saved()).alerts] == [("low", "firing")]
    assert rig.metric("balwatch_alerts_total", rule="low", severity="warning", event="firing")
    assert rig.metric("balwatch_alerts_active", state="firing") == 1

    [resolved] = observe(rig.engine, "9000", at=60)
    await rig.publisher.publish([resolved])
    assert await rig.pending() == [(fired.fingerprint, "firing"), (fired.fingerprint, "resolved")]
    assert (await rig.saved()).alerts == []  # the resolve removed the state with it


async def test_alerts_go_out_placed_and_a_new_placement_applies_to_the_next(rig: Rig) -> None:
    usdt = observe(rig.engine, "4000")
    await rig.publisher.publish(usdt)
    [stored] = await rig.store.pending("mqtt")
    assert (stored.alert["instance"], stored.alert["url"]) == ("treasury-test", None)

    rig.publisher.placement = ("treasury-prod", "https://balwatch.example")  # a reload
    await rig.publisher.publish(observe(rig.engine, "3000", asset="MXN", at=1))
    fingerprint = rig.handed[-1].fingerprint
    assert (rig.handed[-1].instance, rig.handed[-1].url) == (
        "treasury-prod",
        f"https://balwatch.example/api/alerts/{fingerprint}",
    )


async def test_a_groups_alert_commits_with_its_group_state_and_goes_out_placed(
    rig: Rig,
) -> None:
    floor = Rule(name="floor", when=parse_expression("sum(available) < 5000"), group_by=("asset",))
    rig.engine.replace_rules([floor], T0)
    rig.publisher.placement = ("treasury-prod", "https://balwatch.example")
    observe(rig.engine, "4000")
    [fired] = rig.engine.tick(T0)
    saved = structlog.get_config()  # an earlier test may have left info lines filtered out
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            await rig.publisher.publish([fired])
    finally:
        structlog.configure(**saved)
    [logged] = [e for e in logs if e["event"] == "alert"]
    assert (logged["group"], logged["account"], logged["asset"]) == ("asset=USDT", None, "USDT")

    [stored] = await rig.store.pending("mqtt")
    assert (stored.alert["group"], stored.alert["instance"], stored.alert["url"]) == (
        {"asset": "USDT"},
        "treasury-prod",
        f"https://balwatch.example/api/alerts/{fired.fingerprint}",
    )
    # the group's state is on disk with its alert, before any flush
    [state] = (await rig.saved()).alerts
    assert (state.fingerprint, state.group, state.phase) == (
        fired.fingerprint,
        {"asset": "USDT"},
        "firing",
    )
    observe(rig.engine, "9000", at=60)
    [resolved] = rig.engine.tick(T0 + 60)
    await rig.publisher.publish([resolved])
    assert (await rig.saved()).alerts == []  # the resolve removed it


async def test_the_self_alerts_firing_go_with_every_commit(rig: Rig) -> None:
    auth = rig.self_alerts.fire("source_auth_failed", "treasury", "bitso", "bad key", "critical")
    await rig.publisher.publish(auth)
    assert await rig.pending("pager") == [(auth[0].fingerprint, "firing")]
    assert (await rig.saved()).self_alerts == auth

    await rig.publisher.publish(rig.self_alerts.resolve("source_auth_failed", "treasury"))
    assert (await rig.saved()).self_alerts == []


async def test_a_failed_commit_holds_its_alerts_until_the_next_one_succeeds(rig: Rig) -> None:
    rig.store.failing = True
    usdt = observe(rig.engine, "4000")
    with capture_logs() as logs:
        await rig.publisher.publish(usdt)
    [failed] = [e for e in logs if e["event"] == "outbox_commit_failed"]
    assert (failed["alerts"], failed["log_level"]) == (1, "error")
    assert rig.handed == [] and await rig.pending() == []
    assert rig.publisher.held == 1
    assert rig.metric("balwatch_alerts_uncommitted") == 1
    assert rig.metric("balwatch_state_write_failures_total", write="alerts") == 1

    await rig.publisher.publish([])  # a tick while the disk is still full: still held
    assert rig.publisher.held == 1

    rig.store.failing = False
    mxn = observe(rig.engine, "3000", asset="MXN", at=1)
    await rig.publisher.publish(mxn)
    assert events(rig.handed) == [("USDT", "firing"), ("MXN", "firing")]
    assert [f for f, _ in await rig.pending()] == [usdt[0].fingerprint, mxn[0].fingerprint]
    assert rig.publisher.held == 0
    assert rig.metric("balwatch_alerts_uncommitted") == 0
    assert len((await rig.saved()).alerts) == 2


async def test_overlapping_failed_commits_keep_every_alert_once_and_in_order(rig: Rig) -> None:
    """Pollers and the ticker publish concurrently. When commits fail (disk full), every
    alert is held, none twice, and they go out in the order they were made once it clears."""
    rig.store.failing = True
    rig.store.gate.clear()
    first = asyncio.create_task(rig.publisher.publish(observe(rig.engine, "4000")))
    await asyncio.wait_for(rig.store.entered.wait(), WAIT)
    # Made while the first commit is in flight: waits for it, then goes in the next.
    second = asyncio.create_task(rig.publisher.publish(observe(rig.engine, "4000", "MXN", 1)))
    await asyncio.sleep(0)
    rig.store.gate.set()
    await asyncio.gather(first, second)
    assert rig.handed == []
    assert rig.publisher.held == 2

    rig.store.failing = False
    await rig.publisher.publish(observe(rig.engine, "9000", at=2))
    expected = [("USDT", "firing"), ("MXN", "firing"), ("USDT", "resolved")]
    assert events(rig.handed) == expected
    assert len(await rig.pending()) == 3


async def test_cancelled_publishers_leave_their_alerts_to_close_each_committed_once(
    rig: Rig,
) -> None:
    """A stop cancels the pollers: one in the middle of a commit, one waiting for it. The
    engine already counts their alerts as sent, so they must be committed, and once."""
    rig.store.gate.clear()
    usdt, mxn = observe(rig.engine, "4000"), observe(rig.engine, "4000", "MXN", 1)
    first = asyncio.create_task(rig.publisher.publish(usdt))
    await asyncio.wait_for(rig.store.entered.wait(), WAIT)
    second = asyncio.create_task(rig.publisher.publish(mxn))
    await asyncio.sleep(0)  # the second waits for the first commit
    for poller in (first, second):  # as Scheduler.stop does on SIGTERM
        poller.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    rig.store.gate.set()

    await rig.publisher.close()
    assert events(rig.handed) == [("USDT", "firing"), ("MXN", "firing")]
    assert [f for f, _ in await rig.pending()] == [usdt[0].fingerprint, mxn[0].fingerprint]
    assert rig.publisher.held == 0


async def test_close_says_what_it_could_not_commit(rig: Rig) -> None:
    rig.store.failing = True
    await rig.publisher.publish(observe(rig.engine, "4000"))
    with capture_logs() as logs:
        await rig.publisher.close()
    assert [e["alerts"] for e in logs if e["event"] == "stopped_with_uncommitted_alerts"] == [1]


async def test_flush_writes_what_no_commit_carried(rig: Rig) -> None:
    """A pending ``for:`` timer and account liveness reach the store with a flush."""
    assert events(observe(rig.engine, "4000", at=60)) == [("USDT", "firing")]  # LOW only
    await rig.publisher.flush()
    saved = await rig.saved()
    assert sorted((s.rule, s.phase) for s in saved.alerts) == [
        ("low", "firing"),
        ("slow-low", "pending"),
    ]
    assert [(a.account, a.last_ok) for a in saved.accounts] == [("treasury", T0 + 60)]


async def test_a_failed_flush_is_reported_and_its_history_goes_with_the_next(rig: Rig) -> None:
    drop = Rule(name="drop", when=parse_expression("delta(available, 1h) < -100"))
    rig.engine.replace_rules([drop], T0)
    observe(rig.engine, "1000")
    rig.store.failing = True
    with capture_logs() as logs:
        await rig.publisher.flush()  # logged and counted, not raised
    assert [e["log_level"] for e in logs if e["event"] == "state_flush_failed"] == ["error"]
    assert rig.metric("balwatch_state_write_failures_total", write="flush") == 1
    assert (await rig.saved()).samples == []

    rig.store.failing = False
    observe(rig.engine, "900", at=60)
    await rig.publisher.flush()
    key = ("treasury", "bitso", "USDT", "available")
    assert (await rig.saved()).samples == [(key, T0, Decimal(1000)), (key, T0 + 60, Decimal(900))]
