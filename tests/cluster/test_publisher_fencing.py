"""The publisher of a replica on a real PostgreSQL: each commit carries the scope of the
keys its alerts are under; a commit fenced because one key moved on commits the alerts of
the keys still held, and nothing of the lost one; a key past its local deadline is not
even tried; a fenced flush writes nothing and keeps the history for the next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal

import pytest

from balwatch.alert import Alert
from balwatch.cluster.keys import LeaseKeys
from balwatch.cluster.membership import Membership
from balwatch.metrics import Metrics
from balwatch.model import Balance
from balwatch.outbox.worker import Outbox
from balwatch.publisher import AlertPublisher
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.secret import Secret
from balwatch.selfalerts import SelfAlerts
from balwatch.state.base import Scope
from balwatch.state.postgres import PostgresStateStore
from tests.cluster.test_membership import Clock, Holder
from tests.outbox.doubles import ScriptedSink
from tests.postgres import PostgresServer
from tests.test_publisher import sink_config

T0 = 1_800_000_000.0
LOW = Rule(name="low", when=parse_expression("available < 5000"))
KEYS = LeaseKeys(
    owners={"treasury": "key-t", "spare": "key-s"},
    accounts={"key-t": ("treasury",), "key-s": ("spare",)},
)


@dataclass
class Rig:
    publisher: AlertPublisher
    membership: Membership
    clock: Clock
    store: PostgresStateStore
    engine: Engine
    handed: list[Alert]
    db: str

    async def pending(self) -> list[str | None]:
        return [d.alert["account"] for d in await self.store.pending("mqtt")]  # type: ignore[misc]


@pytest.fixture
async def rig(postgres_dsn: str) -> AsyncIterator[Rig]:
    async with AsyncExitStack() as stack:
        store = PostgresStateStore(Secret(postgres_dsn), instance="replica-a", lease_ttl=8.0)
        await stack.enter_async_context(store)
        clock = Clock()
        membership = Membership(store, Holder(lambda: membership), KEYS, ttl=8.0, clock=clock)
        engine = Engine([LOW], clock=lambda: T0)
        handed: list[Alert] = []
        outbox = Outbox(store, [ScriptedSink("mqtt", gate=asyncio.Event())])
        await outbox.start()
        stack.push_async_callback(outbox.stop)
        publisher = AlertPublisher(
            store=store,
            outbox=outbox,
            engine=engine,
            self_alerts=SelfAlerts(lambda: T0),
            sinks=[sink_config("mqtt")],
            metrics=Metrics("test"),
            placement=("replica-a", None),
            on_alerts=handed.extend,
            cluster=membership,
        )
        await membership.step()
        assert set(membership.ownership.held) == {"key-t", "key-s"}
        yield Rig(
            publisher, membership, clock, store, engine, handed, postgres_dsn.rsplit("/", 1)[1]
        )


def low(engine: Engine, account: str) -> list[Alert]:
    row = Balance(account, "bitso", "bitso", "USDT", "usdt", available=Decimal("10"))
    return engine.observe(account, "bitso", [row], T0)


async def test_a_fenced_commit_keeps_the_alerts_of_the_keys_still_held(
    rig: Rig, postgres: PostgresServer
) -> None:
    # another replica took key-t while this one was away
    postgres.execute(
        "UPDATE balwatch_lease SET owner = 'replica-z', token = token + 1 WHERE key = 'key-t'",
        rig.db,
    )
    await rig.publisher.publish([*low(rig.engine, "treasury"), *low(rig.engine, "spare")])
    assert [a.account for a in rig.handed] == ["spare"]
    assert await rig.pending() == ["spare"]
    assert rig.publisher.held == 0
    assert not rig.membership.holds("treasury")
    saved = await rig.store.load(0, Scope({}, {"treasury": "key-t", "spare": "key-s"}))
    assert [s.account for s in saved.alerts] == ["spare"]


async def test_alerts_of_a_key_past_its_local_deadline_are_not_even_tried(rig: Rig) -> None:
    rig.clock.now += 8.0  # a pause past the leases; then key-s alone is renewed
    rig.membership.ownership.renewed(
        {"key-s"}, await rig.store.renew(["key-s"], 8.0), rig.clock.now
    )
    await rig.publisher.publish([*low(rig.engine, "treasury"), *low(rig.engine, "spare")])
    assert [a.account for a in rig.handed] == ["spare"]
    assert await rig.pending() == ["spare"]


async def test_a_fenced_flush_writes_nothing_and_keeps_the_history_for_the_next(
    rig: Rig, postgres: PostgresServer
) -> None:
    rig.engine.replace_rules(
        [Rule(name="drop", when=parse_expression("delta(available, 1h) < -1"))]
    )
    low(rig.engine, "treasury")
    low(rig.engine, "spare")
    postgres.execute(
        "UPDATE balwatch_lease SET owner = 'replica-z', token = token + 1 WHERE key = 'key-t'",
        rig.db,
    )
    await rig.publisher.flush()
    everything = Scope({}, {"treasury": "key-t", "spare": "key-s"})
    assert (await rig.store.load(0, everything)).accounts == []  # fenced: nothing written
    assert await rig.membership.verify() == {"key-t"}
    await rig.publisher.flush()
    saved = await rig.store.load(0, everything)
    assert [a.account for a in saved.accounts] == ["spare"]
    assert {key[0] for key, _, _ in saved.samples} == {"spare"}
