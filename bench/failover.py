"""Failover of replicas on PostgreSQL, and the PostgreSQL outbox beside SQLite's.

Starts, on loopback: a private PostgreSQL (tests/postgres.py), a Mosquitto, a webhook
receiver, the simulator (in this process, stamping every balance request) with
``--accounts`` Bitso accounts, each with its own credential, and ``--replicas`` replicas of
``balwatch run`` (subprocesses, one config: tests/replicas.py) polling every ``--interval``
seconds with leases of ``--ttl`` seconds and a rule that fires when an account's USDT
drops below 1,000.

Then ``--kills`` times: waits until every account is owned by exactly one replica and every
replica owns some; picks an account (in turn), SIGKILLs the replica that owns it and at the
same moment drains that account's USDT; and measures from the SIGKILL

* to the first poll, by another replica, of the first and of the last of the dead replica's
  accounts (the simulator's stamps; a request the dead one had in flight is not counted:
  nothing before 0.2 s, when no lease can have moved yet);
* to the arrival of the account's ``firing`` alert at the MQTT subscriber (it names the
  replica that sent it; it must not be the dead one).

After each kill the balance comes back (the alert resolves) and the replica is started
again with the same name. It prints median and max of each, against the bound of the issue:
the larger of 15 s and two poll intervals.

Last, in the same run, the outbox's throughput (bench/delivery.py's measure: alerts
committed one per call by 64 tasks, delivered through the MQTT sink at QoS 1, each delivery's
removal committed too) on SQLite and on a private PostgreSQL with fsync on. Target >= 1,000
alerts/s on PostgreSQL.

    .venv/bin/python bench/failover.py [--kills 5] [--replicas 3] [--accounts 12]
        [--interval 2] [--ttl 8] [--alerts 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/: the harness of the drills, the servers

from balwatch.simulator.server import Simulator  # noqa: E402
from balwatch.state.sqlite import SqliteStateStore  # noqa: E402
from bench.delivery import outbox_rate, postgres_rate  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.replicas import HIGH, LOW, PollWatch, Replicas, sim_account, watching  # noqa: E402
from tests.webhooks import WebhookReceiver  # noqa: E402

PG_OUTBOX_TARGET = 1000.0
IN_FLIGHT = 0.2  # seconds after a SIGKILL in which a request may still be the dead one's


@dataclass(frozen=True)
class Failover:
    victim: str
    accounts: int  # how many accounts the victim owned
    first_poll: float  # seconds from SIGKILL to the first poll of one of its accounts
    last_poll: float  # ... to the first poll of the last of them
    alert: float  # ... to the firing alert's arrival
    sender: str  # the replica that sent it


async def failovers(
    args: argparse.Namespace, directory: Path, server: PostgresServer
) -> list[Failover]:
    dsn = await asyncio.to_thread(server.create_database, "failover")
    names = [f"wallet-{i:02d}" for i in range(args.accounts)]
    state = PollWatch([sim_account(name) for name in names])
    results: list[Failover] = []
    async with (
        Simulator(state) as sim,
        Mosquitto() as broker,
        WebhookReceiver() as hook,
        watching(broker.port, hook) as alerts,
        aiohttp.ClientSession() as http,
    ):
        cluster = Replicas(
            directory, sim.url, names, dsn, broker.url, hook.url,
            count=args.replicas, poll_interval=args.interval, lease_ttl=args.ttl,
        )  # fmt: skip
        async with cluster:
            await cluster.start()
            wait = 3 * args.ttl + 30
            for index in range(args.kills):
                owners = await cluster.settled(http, timeout=wait, check=spread(cluster))
                account = names[index % len(names)]
                victim = owners[account]
                theirs = [a for a, o in owners.items() if o == victim]
                killed = time.monotonic()
                await cluster[victim].kill()
                state.set_usdt(account, LOW)
                polls = [
                    await state.poll_after(a, killed + IN_FLIGHT, timeout=wait) for a in theirs
                ]
                fired = await alerts.event(account, "firing", after=killed)
                result = Failover(
                    victim,
                    len(theirs),
                    min(polls) - killed,
                    max(polls) - killed,
                    fired.at - killed,
                    str(fired.doc.get("instance")),
                )
                results.append(result)
                print(
                    f"kill {index + 1}: {victim} ({result.accounts} accounts): first poll "
                    f"{result.first_poll:.2f} s, last {result.last_poll:.2f} s, alert "
                    f"{result.alert:.2f} s from {result.sender}",
                    flush=True,
                )
                if result.sender == victim:
                    raise RuntimeError(f"the alert came from the dead replica {victim}")
                state.set_usdt(account, HIGH)
                await alerts.event(account, "resolved", after=fired.at)
                await cluster[victim].start()
            cluster.check_exits()
    return results


def spread(cluster: Replicas) -> Callable[[dict[str, str]], bool]:
    """Every live replica owns at least one account (after a restart: it took its share)."""

    def check(owners: dict[str, str]) -> bool:
        return {r.name for r in cluster.live()} <= set(owners.values())

    return check


async def outbox_rates(args: argparse.Namespace, directory: Path) -> tuple[float, float]:
    """bench/delivery.py's outbox measure on SQLite, then on a private PostgreSQL with fsync
    on (as production runs it; the failover server above runs without)."""
    measure = argparse.Namespace(
        alerts=args.alerts,
        fingerprints=1000,
        producers=64,
        concurrency=64,
        protocol="5",
        postgres_dsn=None,
    )
    async with Mosquitto() as broker:
        async with SqliteStateStore(directory / "outbox") as store:
            sqlite = await outbox_rate(broker.port, store, measure)
        postgres = await postgres_rate(broker.port, measure)
    return sqlite, postgres


def summary(name: str, values: list[float], bound: float) -> str:
    worst = max(values)
    verdict = "met" if worst <= bound else "MISSED"
    return (
        f"  {name:<32} median {statistics.median(values):6.2f} s, max {worst:6.2f} s"
        f"  [<= {bound:g} s: {verdict}]"
    )


async def main(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="balwatch-failover-"))
    server = PostgresServer()
    try:
        await asyncio.to_thread(server.start)
        results = await failovers(args, directory, server)
        sqlite, postgres = await outbox_rates(args, directory)
    finally:
        await asyncio.to_thread(server.close)
        shutil.rmtree(directory, ignore_errors=True)
    bound = max(15.0, 2 * args.interval)
    print(
        f"\n{args.replicas} replicas, {args.accounts} accounts, poll every {args.interval:g} s, "
        f"lease_ttl {args.ttl:g} s; {len(results)} kills (SIGKILL of the owner of a draining "
        f"account); from the SIGKILL:"
    )
    print(summary("first poll of its accounts", [r.first_poll for r in results], bound))
    print(summary("last of its accounts polled", [r.last_poll for r in results], bound))
    print(summary("firing alert received (MQTT)", [r.alert for r in results], bound))
    ok = all(max(r.last_poll, r.alert) <= bound for r in results)
    print(f"\noutbox -> MQTT sink, {args.alerts:,} alerts, same broker, same run:")
    print(f"  SQLite       {sqlite:8,.0f} alerts/s")
    met = postgres >= PG_OUTBOX_TARGET
    print(
        f"  PostgreSQL   {postgres:8,.0f} alerts/s  "
        f"[>= {PG_OUTBOX_TARGET:,.0f}: {'met' if met else 'MISSED'}]"
    )
    return 0 if ok and met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=12)
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval, seconds")
    parser.add_argument("--ttl", type=float, default=8.0, help="lease_ttl, seconds")
    parser.add_argument("--alerts", type=int, default=5000, help="for the outbox figures")
    sys.exit(asyncio.run(main(parser.parse_args())))
