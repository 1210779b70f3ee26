"""The membership loop against a real PostgreSQL: two replicas' loops on one database, each
with a holder that records what it was told (the daemon's part is tests/cluster/
test_two_daemons.py). Beats are stepped by the test; local deadlines run on a fake clock,
the leases on the database's, so nothing waits for time to pass."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AsyncExitStack
from typing import Any

import pytest

from balwatch.cluster.keys import LeaseKeys
from balwatch.cluster.membership import Membership
from balwatch.secret import Secret
from balwatch.state.base import Scope
from balwatch.state.postgres import PostgresStateStore
from tests.postgres import PostgresServer

KEYS = LeaseKeys(
    owners={f"acct-{i}": f"key-{i}" for i in range(6)},
    accounts={f"key-{i}": (f"acct-{i}",) for i in range(6)},
)
TTL = 8.0


class Holder:
    """What the daemon would do, written down: keys taken, handed over, given up."""

    def __init__(self, membership: Callable[[], Membership]) -> None:
        self._membership = membership
        self.taken: dict[str, int] = {}
        self.handed: list[str] = []
        self.given_up: list[str] = []

    async def take(self, scope: Scope) -> None:
        assert all(self._membership().holds(o) for o in scope.owners)
        self.taken.update(scope.tokens)

    async def hand_over(self, keys: Collection[str]) -> None:
        # still held while the daemon flushes them
        assert all(key in self._membership().ownership.held for key in keys)
        self.handed += keys

    async def give_up(self, keys: Collection[str]) -> None:
        assert not any(key in self._membership().ownership.held for key in keys)
        self.given_up += keys


class Counts:
    def __init__(self) -> None:
        self.held = self.acquired = self.lost = self.failovers = 0

    def record_leases(self, *, held: int, acquired: int, lost: int, failovers: int) -> None:
        self.held = held
        self.acquired += acquired
        self.lost += lost
        self.failovers += failovers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Replica = tuple[Membership, Holder, Counts, Clock]


@pytest.fixture
async def replica() -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:

        async def open_replica(dsn: str, instance: str) -> Replica:
            store = PostgresStateStore(Secret(dsn), instance=instance, lease_ttl=TTL, timeout=2.0)
            await stack.enter_async_context(store)
            clock, counts = Clock(), Counts()
            holder = Holder(lambda: membership)
            membership = Membership(store, holder, KEYS, ttl=TTL, events=counts, clock=clock)
            return membership, holder, counts, clock

        yield open_replica


async def test_alone_it_takes_everything_then_a_joiner_gets_its_share_handed_over(
    replica: Callable[..., Any], postgres_dsn: str
) -> None:
    a, a_holder, a_counts, _ = await replica(postgres_dsn, "replica-a")
    await a.step()
    assert set(a_holder.taken) == set(KEYS.keys) and set(a_holder.taken.values()) == {1}
    assert a.accounts() == [f"acct-{i}" for i in range(6)] and a_counts.held == 6

    b, b_holder, _, _ = await replica(postgres_dsn, "replica-b")
    await b.step()  # b sees a's leases held: takes nothing yet
    assert b_holder.taken == {}
    await a.step()  # a sees b: hands over b's share, released
    assert len(a_holder.handed) == 3 and a_counts.held == 3
    await b.step()
    assert set(b_holder.taken) == set(a_holder.handed)
    assert set(b_holder.taken.values()) == {2}  # the owner changed: the token moved on
    assert not set(a.accounts()) & set(b.accounts())
    assert a_counts.failovers == 0  # released, not expired
    doc = b.status()
    assert doc["accounts"] == b.accounts() and len(doc["replicas"]) == 2  # type: ignore[arg-type]


async def test_a_dead_replicas_keys_are_taken_after_its_lease_expires_as_failovers(
    replica: Callable[..., Any], postgres_dsn: str, postgres: PostgresServer
) -> None:
    a, _, _, _ = await replica(postgres_dsn, "replica-a")
    b, b_holder, b_counts, _ = await replica(postgres_dsn, "replica-b")
    await a.step()
    await b.step()
    await a.step()
    await b.step()
    theirs = set(a.ownership.held)
    # a dies: no more beats; its heartbeat and leases age out by the database's clock
    db = postgres_dsn.rsplit("/", 1)[1]
    postgres.execute(
        "UPDATE balwatch_replica SET heartbeat_at = heartbeat_at - interval '1 minute' "
        "WHERE instance = 'replica-a'; UPDATE balwatch_lease SET expires_at = "
        "clock_timestamp() - interval '1 second' WHERE owner = 'replica-a'",
        db,
    )
    await b.step()
    assert set(b.ownership.held) == set(KEYS.keys)
    assert theirs <= set(b_holder.taken)
    assert b_counts.failovers == len(theirs)


async def test_a_key_taken_over_is_found_lost_by_verify_and_given_up_at_the_next_beat(
    replica: Callable[..., Any], postgres_dsn: str, postgres: PostgresServer
) -> None:
    a, a_holder, a_counts, _ = await replica(postgres_dsn, "replica-a")
    await a.step()
    # a paused past its lease, another replica took key-0 meanwhile
    postgres.execute(
        "UPDATE balwatch_lease SET owner = 'replica-z', token = token + 1 WHERE key = 'key-0'",
        postgres_dsn.rsplit("/", 1)[1],
    )
    assert a.holds("acct-0")
    assert await a.verify() == {"key-0"}
    assert not a.holds("acct-0") and a.holds("acct-1")
    assert a.scope(["acct-0", "acct-1"]).tokens == {"key-1": 1}
    await a.step()
    assert a_holder.given_up == ["key-0"] and a_counts.lost == 1


async def test_database_gone_the_keys_are_given_up_before_their_lease_can_expire(
    replica: Callable[..., Any], private_postgres: PostgresServer
) -> None:
    a, a_holder, _, clock = await replica(private_postgres.create_database(), "replica-a")
    await a.step()
    assert len(a.ownership.held) == 6
    private_postgres.stop()
    clock.now += TTL / 2  # by the local clock, well before the lease ends: kept
    await a.step()
    assert a_holder.given_up == [] and a.holds("acct-0")
    clock.now += TTL / 2 - a._heartbeat  # a beat before the end: given up, unasked
    await a.step()
    assert sorted(a_holder.given_up) == sorted(KEYS.keys) and not a.ownership.held
