"""Drills of replicas on PostgreSQL (issue 14, "Done when"): three ``balwatch run`` processes
on a real PostgreSQL, a real Mosquitto and a webhook receiver, accounts on the simulator.

Each drill breaks something the way production breaks it (SIGKILL, SIGSTOP, a database
restart, a network cut through a TCP proxy, a replica joining) while a balance drains, and
checks what the people on call get: every alert once (a duplicate only with the same
``id``), from a replica that held the account, within the failover bound. Leases and polls
are short (``lease_ttl`` 2 s, a poll every 0.5 s) so each drill takes seconds; every wait is
on a condition, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from balwatch.simulator.server import Simulator
from tests.brokers import Mosquitto
from tests.postgres import PostgresServer
from tests.replicas import (
    HIGH,
    LOW,
    AlertWatch,
    PollWatch,
    Replica,
    Replicas,
    sim_account,
    wait_until,
    watching,
)
from tests.tcpproxy import CutMode, TcpProxy
from tests.webhooks import WebhookReceiver

POLL = 0.5
TTL = 2.0
# The bound: the larger of 15 s and two poll intervals.
FAILOVER_BOUND = max(15.0, 2 * POLL)
# Each with its own credential, so its own lease key: three per replica (rendezvous with
# bounded load), so every drill has accounts on every replica.
ACCOUNTS = [f"wallet-{i}" for i in range(9)]
SETTLE = 45.0  # a start of three replicas on a loaded two-core machine, or a take-over

pytestmark = pytest.mark.timeout(180)


@dataclass
class Drill:
    sim: PollWatch
    alerts: AlertWatch
    cluster: Replicas
    http: aiohttp.ClientSession
    server: PostgresServer

    async def settled(self, **kwargs: Any) -> dict[str, str]:
        """account -> its one owner, once every live replica owns a share."""

        def spread(owners: dict[str, str]) -> bool:
            return {r.name for r in self.cluster.live()} <= set(owners.values())

        kwargs.setdefault("check", spread)
        kwargs.setdefault("timeout", SETTLE)
        return await self.cluster.settled(self.http, **kwargs)

    def ids(self, account: str, event: str, *, via: str = "mqtt") -> list[str]:
        """The distinct ids of ``event`` alerts of ``account`` received through ``via``."""
        docs = self.alerts.docs(via=via, account=account)
        return list(dict.fromkeys(d["id"] for d in docs if d["event"] == event))

    def senders(self, account: str) -> set[str]:
        return {d["instance"] for d in self.alerts.docs(account=account)}

    async def everything_once(self, expected: dict[tuple[str, str], int]) -> None:
        """Every (account, event) arrived as exactly that many distinct alerts, through MQTT
        and the webhook alike, and nothing else arrived (duplicates share an id)."""

        def counts(via: str) -> dict[tuple[str, str], int]:
            return {
                (account, event): len(self.ids(account, event, via=via))
                for account in ACCOUNTS
                for event in ("firing", "resolved")
            }

        want = {key: expected.get(key, 0) for key in counts("mqtt")}
        for via in ("mqtt", "webhook"):
            # Each sink delivers on its own: wait for what is due, then look for extras.
            await wait_until(
                lambda via=via: all(counts(via)[k] >= n for k, n in want.items()),
                f"the expected alerts via {via}",
            )
        await self.alerts.settled()
        for via in ("mqtt", "webhook"):
            assert counts(via) == want, f"via {via}: {self.alerts.docs(via=via)}"
        self.cluster.check_exits()


@contextlib.asynccontextmanager
async def drill(
    tmp_path: Path, server: PostgresServer, dsn: str, *, count: int = 3, timeout: float = 2.0
) -> AsyncIterator[Drill]:
    state = PollWatch([sim_account(name) for name in ACCOUNTS])
    async with (
        Simulator(state) as sim,
        Mosquitto() as broker,
        WebhookReceiver() as hook,
        watching(broker.port, hook) as alerts,
        aiohttp.ClientSession() as http,
    ):
        cluster = Replicas(
            tmp_path, sim.url, ACCOUNTS, dsn, broker.url, hook.url,
            count=count, poll_interval=POLL, lease_ttl=TTL, request_timeout=timeout,
        )  # fmt: skip
        async with cluster:
            try:
                yield Drill(state, alerts, cluster, http, server)
                # Whatever broke, each replica wrote JSON lines only (log: {format: json}).
                for replica in cluster.replicas.values():
                    for line in replica.output.splitlines():
                        assert line.startswith("{") and json.loads(line), (replica.name, line)
            except BaseException:
                for replica in cluster.replicas.values():
                    print(f"--- {replica.name}\n{replica.output[-6000:]}")
                raise


async def drain_and_fire(d: Drill, account: str, *, after: float = 0.0) -> dict[str, Any]:
    """Drain ``account``'s USDT; its firing alert as received."""
    d.sim.set_usdt(account, LOW)
    return (await d.alerts.event(account, "firing", after=after)).doc


async def refill_and_resolve(d: Drill, account: str, *, after: float = 0.0) -> dict[str, Any]:
    d.sim.set_usdt(account, HIGH)
    return (await d.alerts.event(account, "resolved", after=after)).doc


def lost_leases(replica: Replica, account: str) -> None:
    """``replica`` noticed it lost its leases and never committed the firing of ``account``
    that another replica sent while it was away (a replica logs ``alert`` once the alert is
    committed; back, it may take the account again and commit its resolve)."""
    events = [e["event"] for e in replica.logs()]
    assert {"lease_deadline_passed", "leases_lost"} & set(events), events
    assert "accounts_given_up" in events, events
    committed = [
        e
        for e in replica.logs("alert")
        if e.get("account") == account and e.get("transition") == "firing"
    ]
    assert not committed, committed


async def test_sigkill_of_the_owner_fails_over_within_the_bound_once(
    tmp_path: Path, postgres: PostgresServer, postgres_dsn: str
) -> None:
    async with drill(tmp_path, postgres, postgres_dsn) as d:
        await d.cluster.start()
        owners = await d.settled()
        account = ACCOUNTS[0]
        victim = owners[account]
        theirs = [a for a, o in owners.items() if o == victim]
        killed = time.monotonic()
        await d.cluster[victim].kill()
        d.sim.set_usdt(account, LOW)
        fired = await d.alerts.event(account, "firing", after=killed)
        assert fired.at - killed <= FAILOVER_BOUND
        assert fired.doc["instance"] != victim
        # Every account of the dead replica is polled again, by the others.
        for other in theirs:
            polled = await d.sim.poll_after(other, killed + 0.2)
            assert polled - killed <= FAILOVER_BOUND, other
        after = await d.settled()
        assert victim not in after.values()
        failovers = [
            key
            for replica in d.cluster.live()
            for entry in replica.logs("leases_acquired")
            for key in entry["failover"]
        ]
        assert len(failovers) == len(set(failovers)) >= 1, failovers
        await refill_and_resolve(d, account)
        await d.everything_once({(account, "firing"): 1, (account, "resolved"): 1})


async def test_a_replica_paused_past_its_lease_commits_and_sends_nothing_it_lost(
    tmp_path: Path, postgres: PostgresServer, postgres_dsn: str
) -> None:
    # A request timeout longer than the pause: the poll in flight completes when it wakes.
    async with drill(tmp_path, postgres, postgres_dsn, timeout=60.0) as d:
        await d.cluster.start()
        owners = await d.settled()
        account = ACCOUNTS[1]
        victim = owners[account]
        paused = d.cluster[victim]
        # The balance drains, and the owner is frozen (SIGSTOP) the moment its poll reaches
        # the exchange: the answer that shows the drained balance waits in its socket. It
        # wakes up with it in hand long after its lease ran out.
        polled = asyncio.Event()
        d.sim.on_request[account] = lambda: (paused.pause(), polled.set())
        d.sim.set_usdt(account, LOW)
        await asyncio.wait_for(polled.wait(), SETTLE)
        stopped = time.monotonic()
        fired = (await d.alerts.event(account, "firing", after=stopped)).doc
        assert fired["instance"] != victim
        await d.settled(check=None)  # the others own everything
        paused.resume()
        # Back: it learns it lost its leases, rejoins and takes a share again (the same
        # alert stays firing, nothing is sent again).
        await d.settled()
        await refill_and_resolve(d, account)
        await d.everything_once({(account, "firing"): 1, (account, "resolved"): 1})
        lost = [e for e in d.alerts.docs(account=account) if e["event"] == "firing"]
        assert {doc["instance"] for doc in lost} == {fired["instance"]}
        lost_leases(paused, account)


async def test_postgres_restart_mid_run_loses_and_doubles_nothing(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    server = private_postgres
    dsn = await asyncio.to_thread(server.create_database)
    async with drill(tmp_path, server, dsn) as d:
        await d.cluster.start()
        await d.settled()
        first, second, third = ACCOUNTS[0], ACCOUNTS[2], ACCOUNTS[4]
        await drain_and_fire(d, first)
        # Down while a balance drains and another one recovers; then back.
        await asyncio.to_thread(server.stop)
        d.sim.set_usdt(second, LOW)
        d.sim.set_usdt(first, HIGH)
        await asyncio.to_thread(server.start)
        await d.alerts.event(second, "firing")
        await d.alerts.event(first, "resolved")
        await d.settled()
        # And a hard crash (SIGKILL of every server process), then the same.
        await asyncio.to_thread(server.kill)
        d.sim.set_usdt(third, LOW)
        await asyncio.to_thread(server.start)
        await d.alerts.event(third, "firing")
        await d.settled()
        await refill_and_resolve(d, second)
        await d.everything_once(
            {
                (first, "firing"): 1,
                (first, "resolved"): 1,
                (second, "firing"): 1,
                (second, "resolved"): 1,
                (third, "firing"): 1,
            }
        )


async def test_a_postgres_outage_past_the_leases_stops_polling_and_loses_nothing(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    server = private_postgres
    dsn = await asyncio.to_thread(server.create_database)
    async with drill(tmp_path, server, dsn) as d:
        await d.cluster.start()
        await d.settled()
        first, second = ACCOUNTS[3], ACCOUNTS[7]
        await drain_and_fire(d, first)
        before = {r.name: len(r.logs("lease_deadline_passed")) for r in d.cluster.live()}
        await asyncio.to_thread(server.stop)
        d.sim.set_usdt(second, LOW)
        d.sim.set_usdt(first, HIGH)
        # No replica can tell an outage from its own partition: each stops polling once its
        # leases may have passed to another, and polls nothing until the database is back.
        await wait_until(
            lambda: all(
                len(d.cluster[name].logs("lease_deadline_passed")) > count
                for name, count in before.items()
            ),
            "every replica to pass its lease deadline",
        )
        quiet = time.monotonic()
        # The one pause of these drills: that nothing is polled shows only over time; four
        # poll intervals, in which three replicas would poll nine accounts 36 times.
        await asyncio.sleep(4 * POLL)
        back = time.monotonic()
        await asyncio.to_thread(server.start)
        in_flight = 0.2  # a request already sent when the deadline passed may land after it
        late = {
            account: [round(t - quiet, 3) for t in polls if quiet + in_flight < t < back]
            for account, polls in d.sim.polls.items()
        }
        assert not any(late.values()), late
        await d.alerts.event(second, "firing")
        await d.alerts.event(first, "resolved")
        await d.settled()
        await d.everything_once(
            {(first, "firing"): 1, (first, "resolved"): 1, (second, "firing"): 1}
        )


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_a_replica_cut_off_from_postgres_loses_and_doubles_nothing(
    tmp_path: Path, postgres: PostgresServer, postgres_dsn: str, mode: CutMode
) -> None:
    async with (
        TcpProxy(postgres.port) as proxy,
        drill(tmp_path, postgres, postgres_dsn, count=2) as d,
    ):
        # The third replica reaches the database only through the proxy.
        database = postgres_dsn.rsplit("/", 1)[1]
        d.cluster.add(
            "replica-3", dsn=postgres.dsn(database).replace(f":{postgres.port}/", f":{proxy.port}/")
        )
        await d.cluster.start()
        owners = await d.settled()
        account = next(a for a, o in owners.items() if o == "replica-3")
        await proxy.cut(mode)
        cut = time.monotonic()
        d.sim.set_usdt(account, LOW)
        seen = await d.alerts.event(account, "firing", after=cut)
        fired = seen.doc
        assert fired["instance"] != "replica-3"
        assert seen.at - cut <= FAILOVER_BOUND
        await d.settled(check=None)
        await proxy.restore()
        await d.settled()  # it is back and took a share again
        await refill_and_resolve(d, account)
        await d.everything_once({(account, "firing"): 1, (account, "resolved"): 1})
        firings = [doc for doc in d.alerts.docs(account=account) if doc["event"] == "firing"]
        assert {doc["instance"] for doc in firings} == {fired["instance"]}
        lost_leases(d.cluster["replica-3"], account)


async def test_a_replica_joining_takes_a_share_and_leaving_gives_it_back_without_refiring(
    tmp_path: Path, postgres: PostgresServer, postgres_dsn: str
) -> None:
    async with drill(tmp_path, postgres, postgres_dsn, count=2) as d:
        await d.cluster.start()
        await d.settled()
        for account in ACCOUNTS:
            await drain_and_fire(d, account)
        joiner = d.cluster.add("replica-3")
        await joiner.start()
        owners = await d.settled()
        moved = [a for a, o in owners.items() if o == "replica-3"]
        assert 2 <= len(moved) < len(ACCOUNTS)
        # Its accounts are polled by it and evaluated against the states it loaded: the
        # alerts stay firing without a word (two polls each: the first one's evaluation is
        # committed before the second). A resolve then comes from it.
        owned = time.monotonic()
        for account in moved:
            await d.sim.poll_after(account, await d.sim.poll_after(account, owned))
        doc = await refill_and_resolve(d, moved[0])
        assert doc["instance"] == "replica-3"
        # And it leaves cleanly (SIGTERM): its leases are released, not left to expire, so
        # the others poll its accounts within half a lease_ttl (an expiry takes three
        # quarters at least: renewed a beat before the exit at most); nothing fires again.
        assert await joiner.terminate() == 0
        gone = time.monotonic()  # any poll from now on is another replica's
        for account in moved:
            polled = await d.sim.poll_after(account, gone)
            assert polled - gone < TTL / 2, (account, polled - gone)
        await d.settled()
        doc = await refill_and_resolve(d, moved[1])
        assert doc["instance"] in {"replica-1", "replica-2"}
        expected = {(account, "firing"): 1 for account in ACCOUNTS}
        expected[(moved[0], "resolved")] = expected[(moved[1], "resolved")] = 1
        await d.everything_once(expected)
