"""Replicas on one PostgreSQL database: heartbeats, leases with fencing tokens, scoped
writes and reads, per-instance self-alerts, and delivery claims, each with two stores as
two daemons would hold them (tests/postgres.py's real server, no mocks).

Time: leases and claims expire by the database's clock. A test that needs one expired
takes it for no time at all (a ttl of 0), so nothing waits for a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from balwatch.alert import Alert
from balwatch.outbox.worker import Outbox
from balwatch.rules.engine import AccountState, AlertState
from balwatch.rules.groups import GROUP_SERIES
from balwatch.rules.history import HistoryChanges
from balwatch.secret import Secret
from balwatch.selfalerts import SelfAlerts
from balwatch.state.base import (
    AlertCommit,
    Delivery,
    Fenced,
    RoutedAlert,
    Scope,
    StateChange,
    StateSnapshot,
    owner_name,
)
from balwatch.state.postgres import PostgresStateStore
from tests.outbox.doubles import ScriptedSink, alert
from tests.waiting import within

T0 = 1_800_000_000.0
NO_HISTORY = HistoryChanges([], [], [])
Open = Callable[..., Any]


@pytest.fixture
async def replica(postgres_dsn: str) -> AsyncIterator[Open]:
    """Open a store as replica ``instance`` on the test's database; closed at the end."""
    async with AsyncExitStack() as stack:

        async def open_store(instance: str, lease_ttl: float = 8.0) -> PostgresStateStore:
            made = PostgresStateStore(Secret(postgres_dsn), instance=instance, lease_ttl=lease_ttl)
            return await stack.enter_async_context(made)

        yield open_store


def state(fingerprint: str, account: str = "acct-a") -> AlertState:
    return AlertState(
        fingerprint=fingerprint, rule="low", when="available < 5000", clear=None,
        severity="warning", account=account, exchange="bitso", venue="bitso", asset="BTC",
        phase="firing", since=T0, last_notified=T0, values={"available": Decimal("4000.10")},
    )  # fmt: skip


def group_state(rule: str) -> AlertState:
    made = state(f"g-{rule}", account="acct-a")
    made.rule, made.account, made.group = rule, None, {"desk": "ops"}
    return made


def self_alert(account: str) -> Alert:
    [fired] = SelfAlerts(lambda: T0).fire(
        "source_auth_failed", account, "bitso", f"{account}: bad key", "critical"
    )
    return fired


def scope(tokens: dict[str, int], **owners: str) -> Scope:
    return Scope(tokens=tokens, owners=owners)


def commit(fingerprint: str, n: int, *sinks: str, scope: Scope | None = None) -> AlertCommit:
    return AlertCommit(
        [RoutedAlert(alert(fingerprint, n), sinks or ("mqtt",))],
        [StateChange(fingerprint, "low", state(fingerprint))],
        scope=scope,
    )


def doc_ids(deliveries: list[Delivery]) -> list[str]:
    return [d.alert["id"] for d in deliveries]


def owner_of(dsn: str, delivery_id: int) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT claimed_by FROM balwatch_delivery WHERE id = %s", (delivery_id,)
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# --- membership ------------------------------------------------------------------------


async def test_replicas_see_each_other_by_heartbeat_until_forgotten(replica: Open) -> None:
    a, b = await replica("a"), await replica("b")
    await a.heartbeat("10.0.0.1:9464")
    await b.heartbeat(None)
    first = {r.instance: r for r in await a.replicas()}
    assert sorted(first) == ["a", "b"]
    assert (first["a"].address, first["b"].address) == ("10.0.0.1:9464", None)
    assert all(
        0 <= r.age < 5 and r.version and r.started_at <= r.heartbeat_at for r in first.values()
    )
    await a.heartbeat("10.0.0.1:9464")
    [again] = [r for r in await b.replicas() if r.instance == "a"]
    assert again.started_at == first["a"].started_at  # the same run
    assert again.heartbeat_at >= first["a"].heartbeat_at
    await a.forget_replica("a")
    assert [r.instance for r in await b.replicas()] == ["b"]


# --- leases ----------------------------------------------------------------------------


async def test_a_lease_is_taken_when_free_renewed_by_its_owner_and_released(
    replica: Open,
) -> None:
    a, b = await replica("a"), await replica("b")
    taken = await a.acquire(["k1", "k2"], 8)
    assert [(x.key, x.owner, x.token) for x in taken] == [("k1", "a", 1), ("k2", "a", 1)]
    assert all(7 < x.remaining <= 8 for x in taken)
    assert await b.acquire(["k1"], 8) == []  # held
    again = await a.acquire(["k1"], 8)  # ours: renewed, token kept
    assert [(x.owner, x.token, x.acquired_at) for x in again] == [("a", 1, taken[0].acquired_at)]
    await a.release(["k1"])
    [released] = [x for x in await b.leases() if x.key == "k1"]
    assert (released.owner, released.token) == (None, 1) and released.remaining <= 0
    [moved] = await b.acquire(["k1"], 8)
    assert (moved.owner, moved.token) == ("b", 2)  # a new owner: the token grows
    assert [x.key for x in await a.renew(["k1", "k2"], 8)] == ["k2"]  # k1 is lost to a


async def test_an_expired_lease_is_taken_over_with_a_new_token(replica: Open) -> None:
    a, b = await replica("a"), await replica("b")
    await a.acquire(["k"], 0)  # expires at once
    assert await a.renew(["k"], 8) == []  # too late to renew
    [taken] = await b.acquire(["k"], 8)
    assert (taken.owner, taken.token) == ("b", 2)


# --- fencing ---------------------------------------------------------------------------


async def test_a_commit_whose_token_moved_on_is_fenced_and_writes_nothing(
    replica: Open, postgres_dsn: str
) -> None:
    a, b = await replica("a"), await replica("b")
    [lease] = await a.acquire(["k"], 0)
    held = scope({"k": lease.token}, **{"acct-a": "k"})
    [taken] = await b.acquire(["k"], 8)
    with pytest.raises(Fenced, match="lease k is no longer a's"):
        await a.commit(commit("fp1", 1, scope=held))
    with pytest.raises(Fenced):
        await a.flush(StateSnapshot([state("fp9")], [], NO_HISTORY, scope=held))
    assert await b.counts() == {} and (await b.load(0)).alerts == []
    # The new owner writes with its token.
    [delivery] = await b.commit(
        commit("fp1", 1, scope=scope({"k": taken.token}, **{"acct-a": "k"}))
    )
    assert doc_ids(await b.pending("mqtt")) == ["fp1:1"] and delivery.fingerprint == "fp1"


async def test_a_commit_on_an_expired_lease_is_fenced(replica: Open) -> None:
    a = await replica("a")
    [lease] = await a.acquire(["k"], 0)
    with pytest.raises(Fenced, match="expired"):
        await a.commit(commit("fp1", 1, scope=scope({"k": lease.token}, **{"acct-a": "k"})))
    assert await a.counts() == {}
    with pytest.raises(Fenced, match="no longer"):  # a key it never held
        await a.commit(commit("fp1", 1, scope=scope({"other": 1})))


async def test_a_fenced_commit_fails_alone_among_those_written_with_it(replica: Open) -> None:
    a = await replica("a")
    [good] = await a.acquire(["good"], 8)
    [gone] = await a.acquire(["gone"], 0)
    results = await asyncio.gather(
        a.commit(commit("fp1", 1, scope=scope({"good": good.token}))),
        a.commit(commit("fp2", 1, scope=scope({"gone": gone.token}))),
        a.commit(commit("fp3", 1)),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["list", "Fenced", "list"]
    assert doc_ids(await a.pending("mqtt")) == ["fp1:1", "fp3:1"]


async def test_a_take_over_waits_for_a_commit_under_the_old_token(
    replica: Open, postgres_dsn: str
) -> None:
    """The fencing check holds the lease row until its transaction ends: the commit is in
    before the new owner holds the lease, never after."""
    a, b = await replica("a"), await replica("b")
    await a.acquire(["k"], 0)
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as writer:
        # As a commit's transaction between its fencing check and its end.
        await writer.execute("SELECT 1 FROM balwatch_lease WHERE key = 'k' FOR SHARE")
        take = asyncio.create_task(b.acquire(["k"], 8))
        await within(lock_waited_for(postgres_dsn), "the take-over to wait for the lease row")
        assert not take.done()
        await writer.commit()
    [taken] = await take
    assert (taken.owner, taken.token) == ("b", 2)


async def lock_waited_for(dsn: str) -> None:
    """Until some transaction waits for another's row lock (the server's own view)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher:
        while True:
            cur = await watcher.execute(
                "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            )
            if await cur.fetchone():
                return
            await asyncio.sleep(0.01)


# --- scoped flush and load ---------------------------------------------------------------


async def test_each_replica_flushes_its_own_states_and_a_new_owner_loads_them(
    replica: Open,
) -> None:
    a, b = await replica("a"), await replica("b")
    [ka] = await a.acquire(["ka"], 8)
    [kb] = await b.acquire(["kb"], 8)
    series = GROUP_SERIES + "portfolio"
    a_scope = scope({"ka": ka.token}, **{"acct-a": "ka", series: "ka"})
    b_scope = scope({"kb": kb.token}, **{"acct-b": "kb"})
    a_history = HistoryChanges(
        [], [], [(("acct-a", "bitso", "BTC", "available"), T0, Decimal("1.5"))]
    )
    b_history = HistoryChanges(
        [], [], [(("acct-b", "bitso", "BTC", "available"), T0, Decimal("2"))]
    )
    grouped = group_state("portfolio")
    assert owner_name(grouped) == series
    await a.flush(
        StateSnapshot(
            [state("fa", "acct-a"), grouped, state("stray", "acct-b")],  # stray: not a's
            [AccountState("acct-a", "bitso", first_seen=T0, last_ok=T0)],
            a_history,
            scope=a_scope,
        )
    )
    await b.flush(
        StateSnapshot(
            [state("fb", "acct-b")],
            [AccountState("acct-b", "bitso", first_seen=T0, last_ok=T0)],
            b_history,
            scope=b_scope,
        )
    )
    everything = await a.load(0)
    assert sorted(s.fingerprint for s in everything.alerts) == ["fa", "fb", "g-portfolio"]
    # a flushes again without fa: only a's states are replaced, b's stay.
    await a.flush(StateSnapshot([grouped], [], NO_HISTORY, scope=a_scope))
    assert sorted(s.fingerprint for s in (await b.load(0)).alerts) == ["fb", "g-portfolio"]
    # b takes a's key over: it loads what a committed, and only that.
    await a.release(["ka"])
    [taken] = await b.acquire(["ka"], 8)
    saved = await b.load(0, scope({"ka": taken.token}, **{"acct-a": "ka", series: "ka"}))
    assert [s.fingerprint for s in saved.alerts] == ["g-portfolio"]
    assert saved.accounts == []
    assert saved.samples == [(("acct-a", "bitso", "BTC", "available"), T0, Decimal("1.5"))]


async def test_self_alerts_are_each_replicas_own(replica: Open) -> None:
    a, b = await replica("a"), await replica("b")
    await a.commit(AlertCommit(self_alerts=[self_alert("x")]))
    await b.commit(AlertCommit(self_alerts=[self_alert("y")]))
    await b.commit(AlertCommit(self_alerts=[self_alert("y"), self_alert("z")]))
    assert [x.account for x in (await a.load(0)).self_alerts] == ["x"]
    assert sorted(x.account for x in (await b.load(0)).self_alerts) == ["y", "z"]


# --- delivery claims ---------------------------------------------------------------------


async def test_a_committed_delivery_is_its_committers_to_send(replica: Open) -> None:
    a, b = await replica("a"), await replica("b")
    handed: list[list[Delivery]] = []
    deliveries = await a.commit(commit("fp1", 1), on_commit=handed.append)
    assert handed == [deliveries]
    assert doc_ids(await a.pending("mqtt")) == ["fp1:1"]
    assert await b.pending("mqtt") == []  # a's claim is live
    assert await a.claimed([d.id for d in deliveries]) == [deliveries[0].id]
    assert await b.claimed([d.id for d in deliveries]) == []


async def test_deliveries_of_one_alert_keep_their_order_across_replicas(
    replica: Open, postgres_dsn: str
) -> None:
    """b commits fp1's next notification while a still holds the first: b leaves it to
    whoever sends the first, so the two never race."""
    a, b = await replica("a"), await replica("b")
    [first] = await a.commit(commit("fp1", 1))
    handed: list[list[Delivery]] = []
    assert await b.commit(commit("fp1", 2), on_commit=handed.append) == []
    [other] = await b.commit(commit("fp2", 1))  # another alert: b's own
    assert handed == [[]]
    assert doc_ids(await b.pending("mqtt")) == ["fp2:1"]
    assert doc_ids(await a.pending("mqtt")) == ["fp1:1", "fp1:2"]  # a takes the second too
    assert other.fingerprint == "fp2" and first.fingerprint == "fp1"


async def test_a_lapsed_claim_is_taken_and_the_old_claimer_drops_it(
    replica: Open, postgres_dsn: str
) -> None:
    a, b = await replica("a", lease_ttl=0), await replica("b")  # a's claims lapse at once
    deliveries = await a.commit(commit("fp1", 1))
    deliveries += await a.commit(commit("fp1", 2))
    taken = await b.pending("mqtt")
    assert doc_ids(taken) == ["fp1:1", "fp1:2"]
    assert owner_of(postgres_dsn, deliveries[0].id) == "b"
    assert await a.claimed([d.id for d in deliveries]) == []  # a's worker drops them unsent
    # b sends them; a's late outcome of the same rows changes nothing and raises nothing.
    await b.ack_all([d.id for d in taken])
    await a.ack(deliveries[0].id)
    await a.fail(deliveries[1].id, "HTTP 503", dead=True)
    assert await b.counts() == {}


async def test_a_heartbeat_renews_the_claims_of_its_replica(
    replica: Open, postgres_dsn: str
) -> None:
    a = await replica("a")
    [delivery] = await a.commit(commit("fp1", 1))

    def claimed_until() -> Any:
        with psycopg.connect(postgres_dsn) as conn:
            row = conn.execute(
                "SELECT claimed_until FROM balwatch_delivery WHERE id = %s", (delivery.id,)
            ).fetchone()
        assert row is not None
        return row[0]

    before = claimed_until()
    await a.heartbeat(None)
    assert claimed_until() > before


async def test_a_group_message_is_claimed_whole_or_not_at_all(
    replica: Open, postgres_dsn: str
) -> None:
    a, b = await replica("a", lease_ttl=0), await replica("b")
    rows = [d for n in (1, 2) for d in await a.commit(commit(f"fp{n}", 1, "chat"))]
    await a.bundle("m1", [d.id for d in rows])
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as other:
        # Another replica's pending() is claiming the second row right now.
        await other.execute(
            "SELECT 1 FROM balwatch_delivery WHERE id = %s FOR UPDATE", (rows[1].id,)
        )
        assert await b.pending("chat") == []  # not the first row alone
        await other.rollback()
    assert [(d.alert["id"], d.message) for d in await b.pending("chat")] == [
        ("fp1:1", "m1"),
        ("fp2:1", "m1"),
    ]


async def test_two_replicas_reading_the_outbox_at_once_claim_each_row_once(
    replica: Open,
) -> None:
    a = await replica("a", lease_ttl=0)
    b, c = await replica("b"), await replica("c")
    for n in range(30):
        await a.commit(commit(f"fp{n}", 1))
    got_b, got_c = await asyncio.gather(b.pending("mqtt"), c.pending("mqtt"))
    ids_b, ids_c = {d.id for d in got_b}, {d.id for d in got_c}
    assert not ids_b & ids_c
    assert len(ids_b | ids_c) == 30


async def test_the_worker_sends_only_what_is_still_its_replicas(
    replica: Open, postgres_dsn: str
) -> None:
    """a's worker was handed fp1's delivery at commit, but a's claim lapsed and b took it
    meanwhile: a drops it unsent (b sends it) and still sends what is its own."""
    a, b = await replica("a", lease_ttl=0), await replica("b")
    [taken] = await a.commit(commit("fp1", 1))
    assert doc_ids(await b.pending("mqtt")) == ["fp1:1"]
    await a.commit(commit("fp2", 1))
    sink = ScriptedSink("mqtt")
    outbox = Outbox(a, [sink])
    await outbox.start()  # takes fp2 (a's own), not fp1 (b's claim is live)
    outbox.workers["mqtt"].push(taken)  # as the commit's on_commit did, before b took it
    await within(outbox.wait_settled(), "a's worker to settle both")
    await outbox.stop()
    assert sink.delivered_ids() == ["fp2:1"]
    assert owner_of(postgres_dsn, taken.id) == "b"
    assert doc_ids(await b.pending("mqtt")) == ["fp1:1"]
