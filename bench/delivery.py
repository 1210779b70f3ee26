"""Durable delivery throughput: outbox + MQTT sink against raw aiomqtt, on one loopback broker.

Starts its own ``mosquitto`` on a free loopback port, then measures in the same run:

(a) raw: aiomqtt QoS 1 publishes of an alert-sized payload, ``--publishers`` tasks sharing
    one connection, each awaiting its PUBACK; messages/s;
(b) ``MqttSink.send`` alone, ``--concurrency`` sends in flight, no outbox: the ceiling that
    the sink itself sets;
(c) outbox: ``--alerts`` alerts over ``--fingerprints`` series, enqueued by ``--producers``
    tasks one alert per call (each call returns once its commit is on disk, WAL with
    synchronous=FULL), delivered by the worker through ``balwatch.sinks.mqtt.MqttSink`` at
    QoS 1, each delivery's removal committed too; alerts/s from the first enqueue until the
    outbox is empty.

Then, in the same run, a chat sink:

(d) chat: ``--chat-alerts`` alerts over ``--chat-groups`` rules, committed by ``--producers``
    tasks, delivered by the worker through ``balwatch.sinks.webhook.WebhookSink`` in Slack
    format (``--chat-format``) to a loopback server answering as that service does and
    enforcing its rate (tests/chatservices.py): one message per group, paced at the
    service's rate; prints the messages and requests it took and when the last one landed.

With ``--postgres`` (issue 14), (c) again with the outbox in PostgreSQL: a private server
(tests/postgres.py, fsync on) on loopback, or the one ``--postgres-dsn`` names; target
>= 1,000 alerts/s.

Targets (issue 4): (c) >= 2,000 alerts/s, and (c) >= 0.5 of (a). The MQTT sink publishes two
messages per alert (the event, and the retained ``active/`` state), so (c) is compared with
(a) doing the same work, two raw publishes per alert; alerts per raw message is printed too.
Target (issue 13): (d) delivers 1,000 alerts in 20 groups as 20 messages, none refused.

    .venv/bin/python bench/delivery.py [--alerts 20000] [--state-dir DIR] [--postgres]

``--state-dir`` puts the database on the disk under test (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/brokers.py: the Mosquitto helper of the test suite

from balwatch.config.model import MqttSinkConfig, WebhookSinkConfig  # noqa: E402
from balwatch.outbox.worker import Outbox  # noqa: E402
from balwatch.secret import Secret  # noqa: E402
from balwatch.sinks.formats import encode_alert  # noqa: E402
from balwatch.sinks.mqtt import MqttSink  # noqa: E402
from balwatch.sinks.webhook import WebhookSink  # noqa: E402
from balwatch.state.base import StateStore  # noqa: E402
from balwatch.state.sqlite import SqliteStateStore  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.chatservices import ChatService  # noqa: E402

ALERTS_TARGET = 2000.0
POSTGRES_TARGET = 1000.0
RATIO_TARGET = 0.5


def make_alert(seq: int, fingerprints: int) -> dict[str, Any]:
    series = seq % fingerprints
    resolved = (seq // fingerprints) % 2 == 1
    return {
        "version": 1,
        "id": f"{seq:08d}",
        "fingerprint": f"{series:016x}",
        "status": "resolved" if resolved else "firing",
        "event": "resolved" if resolved else "firing",
        "rule": "low-available",
        "severity": "critical",
        "account": f"acct-{series:04d}",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "summary": f"acct-{series:04d} USDT: only 4210.55 available",
        "description": "Hot wallet running low",
        "labels": {"team": "treasury"},
        "expression": "available < 5000",
        "values": {"available": "4210.55"},
        "started_at": "2026-11-25T10:00:00Z",
        "resolved_at": "2026-11-25T10:30:00Z" if resolved else None,
        "observed_at": "2026-11-25T10:02:00Z",
    }


async def raw_rate(port: int, messages: int, publishers: int, protocol: str) -> float:
    payload = encode_alert(make_alert(0, 1))
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=version, max_inflight_messages=1000
    ) as client:
        client.pending_calls_threshold = publishers  # else it warns about every publish

        async def publisher(share: int) -> None:
            for i in range(share):
                await client.publish(f"bench/raw/{i % 100}", payload, qos=1)

        shares = [messages // publishers + (i < messages % publishers) for i in range(publishers)]
        started = time.perf_counter()
        await asyncio.gather(*(publisher(share) for share in shares))
        return messages / (time.perf_counter() - started)


def sink_config(port: int, protocol: str) -> MqttSinkConfig:
    url = f"mqtt://127.0.0.1:{port}"
    return MqttSinkConfig.model_validate(
        {"type": "mqtt", "name": "bench", "url": url, "qos": 1, "protocol": protocol}
    )


async def sink_rate(port: int, args: argparse.Namespace) -> float:
    """MqttSink.send alone, ``--concurrency`` sends in flight: the ceiling for the outbox."""
    docs = [make_alert(seq, args.fingerprints) for seq in range(args.alerts)]
    async with MqttSink(sink_config(port, args.protocol)) as sink:

        async def sender(first: int) -> None:
            for doc in docs[first :: args.concurrency]:
                await sink.send(doc)

        started = time.perf_counter()
        await asyncio.gather(*(sender(i) for i in range(args.concurrency)))
        return len(docs) / (time.perf_counter() - started)


async def outbox_rate(port: int, store: StateStore, args: argparse.Namespace) -> float:
    """Alerts/s from the first enqueue until every delivery is acknowledged and pruned, on
    ``store`` (an open, empty one: bench/failover.py passes a PostgreSQL store)."""
    docs = [make_alert(seq, args.fingerprints) for seq in range(args.alerts)]
    async with MqttSink(sink_config(port, args.protocol)) as sink:
        outbox = Outbox(store, [sink], concurrency=args.concurrency)
        await outbox.start()

        async def producer(first: int) -> None:
            for doc in docs[first :: args.producers]:
                await outbox.enqueue(doc, ["bench"])

        started = time.perf_counter()
        await asyncio.gather(*(producer(i) for i in range(args.producers)))
        await outbox.wait_settled()
        elapsed = time.perf_counter() - started
        stats = outbox.stats()["bench"]
        await outbox.stop()
    if stats.delivered != args.alerts or stats.failed or stats.dead:
        raise RuntimeError(f"not every alert was delivered cleanly: {stats}")
    if await store.counts():
        raise RuntimeError("the outbox is not empty after delivery")
    return len(docs) / elapsed


@dataclass(frozen=True)
class ChatFigure:
    alerts: int
    groups: int
    enqueue_rate: float  # alerts/s committed, until the last commit returned
    messages: int  # accepted by the service
    requests: int  # all it received, refused ones (429) included
    listed_once: bool  # every alert in exactly one message
    last_at: float  # seconds from the first enqueue to the last message


async def chat_figure(state_dir: Path, args: argparse.Namespace) -> ChatFigure:
    """``--chat-alerts`` alerts over ``--chat-groups`` rules to a paced chat sink."""
    docs = [
        {**make_alert(seq, args.chat_alerts), "rule": f"rule-{seq % args.chat_groups:02d}"}
        for seq in range(args.chat_alerts)
    ]
    async with SqliteStateStore(state_dir) as store, ChatService(args.chat_format) as service:
        config = WebhookSinkConfig.model_validate(
            {
                "type": "webhook",
                "name": "chat",
                "format": args.chat_format,
                "url": service.url,
                "group_wait": args.group_wait,
                **({"chat_id": "-100123"} if args.chat_format == "telegram" else {}),
            }
        )
        async with WebhookSink(config) as sink:
            outbox = Outbox(store, [sink], concurrency=args.concurrency)
            await outbox.start()

            async def producer(first: int) -> None:
                for doc in docs[first :: args.producers]:
                    await outbox.enqueue(doc, ["chat"])

            started = time.perf_counter()
            await asyncio.gather(*(producer(i) for i in range(args.producers)))
            enqueued = time.perf_counter() - started
            await outbox.wait_settled()
            last_at = time.perf_counter() - started
            stats = outbox.stats()["chat"]
            await outbox.stop()
        if stats.delivered != args.chat_alerts or stats.dead:
            raise RuntimeError(f"not every alert was delivered: {stats}")
    listed = [  # each line of a group message: marker, then the alert's account
        account
        for body in service.messages
        for account in re.findall(r"[🔴🟠🔵✅] (acct-\d{4})", json.dumps(body, ensure_ascii=False))
    ]
    return ChatFigure(
        alerts=args.chat_alerts,
        groups=args.chat_groups,
        enqueue_rate=args.chat_alerts / enqueued,
        messages=len(service.messages),
        requests=len(service.arrivals),
        listed_once=sorted(listed) == sorted(d["account"] for d in docs),
        last_at=last_at,
    )


async def postgres_rate(port: int, args: argparse.Namespace) -> float:
    """(c) with the outbox in PostgreSQL: the server ``--postgres-dsn`` names (its database
    must be empty), or a private one with fsync on, as a production server runs."""
    from balwatch.state.postgres import PostgresStateStore
    from tests.postgres import PostgresServer

    if args.postgres_dsn:
        async with PostgresStateStore(Secret(args.postgres_dsn), instance="bench") as store:
            return await outbox_rate(port, store, args)
    with PostgresServer(durable=True) as server:
        dsn = server.create_database("bench")
        async with PostgresStateStore(Secret(dsn), instance="bench") as store:
            return await outbox_rate(port, store, args)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="balwatch-bench-") as tmp:
        state_dir = Path(args.state_dir or tmp) / "bench-state"
        shutil.rmtree(state_dir, ignore_errors=True)
        try:
            async with Mosquitto() as broker:
                raw = await raw_rate(broker.port, args.messages, args.publishers, args.protocol)
                alone = await sink_rate(broker.port, args)
                async with SqliteStateStore(state_dir) as store:
                    durable = await outbox_rate(broker.port, store, args)
                on_postgres = (
                    await postgres_rate(broker.port, args)
                    if args.postgres or args.postgres_dsn
                    else None
                )
            shutil.rmtree(state_dir, ignore_errors=True)
            chat = await chat_figure(state_dir, args)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
    # The sink publishes each alert twice (docs/alerts.md, MQTT): the event, and the retained
    # active/ state. Raw aiomqtt delivering the same alerts makes the same two publishes, so
    # the like-for-like baseline is half its message rate.
    raw_alerts = raw / 2
    ratio = durable / raw_alerts
    print(f"MQTT {args.protocol}, QoS 1, loopback mosquitto; {args.alerts:,} alerts")
    print(f"raw aiomqtt publish ({args.publishers} tasks):   {raw:8,.0f} msg/s")
    print(f"  same two publishes per alert:  {raw_alerts:8,.0f} alerts/s")
    print(f"MqttSink.send alone:           {alone:8,.0f} alerts/s ({2 * alone:,.0f} msg/s)")
    print(f"outbox -> MqttSink, durable:   {durable:8,.0f} alerts/s ({2 * durable:,.0f} msg/s)")
    print(f"  >= {ALERTS_TARGET:,.0f} alerts/s:      {verdict(durable >= ALERTS_TARGET)}")
    print(
        f"  >= {RATIO_TARGET} of raw:          {verdict(ratio >= RATIO_TARGET)} ({ratio:.2f} of "
        f"raw for the same publishes; {durable / raw:.2f} alerts per raw message)"
    )
    print(f"  outbox keeps {durable / alone:.2f} of the sink's own rate")
    if on_postgres is not None:
        where = "--postgres-dsn" if args.postgres_dsn else "loopback, fsync on"
        print(f"outbox in PostgreSQL ({where}): {on_postgres:8,.0f} alerts/s")
        print(
            f"  >= {POSTGRES_TARGET:,.0f} alerts/s:      {verdict(on_postgres >= POSTGRES_TARGET)}"
        )
    print(
        f"chat sink ({args.chat_format}, loopback, paced at the service's rate, "
        f"group_wait {args.group_wait}): {chat.alerts:,} alerts in {chat.groups} groups"
    )
    print(f"  committed durably:             {chat.enqueue_rate:8,.0f} alerts/s")
    print(
        f"  delivered as {chat.messages} messages ({chat.requests} requests), "
        f"every alert listed once: {chat.listed_once}; last one after {chat.last_at:.1f} s"
    )
    ok = chat.messages == chat.groups == chat.requests and chat.listed_once
    print(f"  {chat.groups} groups as {chat.groups} messages, none refused: {verdict(ok)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=20_000)
    parser.add_argument("--fingerprints", type=int, default=1_000)
    parser.add_argument("--producers", type=int, default=64, help="enqueueing tasks")
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight")
    parser.add_argument("--messages", type=int, default=20_000, help="raw publishes")
    parser.add_argument("--publishers", type=int, default=32, help="raw publisher tasks")
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="5", help="for both")
    parser.add_argument("--state-dir", help="where the outbox database goes")
    parser.add_argument("--postgres", action="store_true", help="(c) on PostgreSQL too")
    parser.add_argument("--postgres-dsn", help="that server, not a private one")
    parser.add_argument("--chat-alerts", type=int, default=1_000)
    parser.add_argument("--chat-groups", type=int, default=20, help="rules, one group each")
    parser.add_argument(
        "--chat-format",
        choices=["slack", "discord", "telegram", "mattermost", "teams"],
        default="slack",
    )
    parser.add_argument("--group-wait", default="2s", help="long enough to commit the storm")
    asyncio.run(main(parser.parse_args()))
