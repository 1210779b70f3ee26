"""SIGKILL in the middle of delivery: a new process delivers everything that was committed."""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from pathlib import Path

from balwatch.outbox.worker import Outbox
from balwatch.sinks.webhook import WebhookSink
from balwatch.state.sqlite import SqliteStateStore
from tests.outbox.crash_child import sink_config
from tests.outbox.doubles import alert
from tests.webhooks import Reply, WebhookReceiver

FINGERPRINTS, EVENTS = 20, 10  # 200 alerts
ANSWERED = 50  # then the receiver stops answering, so deliveries are in flight when killed


async def test_sigkill_mid_delivery_loses_nothing(state_dir: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    async with WebhookReceiver(*[Reply()] * ANSWERED, default=Reply(hang=True)) as receiver:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.outbox.crash_child",
            str(state_dir), receiver.url, str(FINGERPRINTS), str(EVENTS),
            cwd=root, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line == b"enqueued\n"
            await receiver.wait_for(ANSWERED + 1)  # at least one request hangs in flight
        finally:
            child.kill()
            await child.wait()
        before_kill = len(receiver.requests)

        receiver.script([Reply()] * 1000)
        async with SqliteStateStore(state_dir) as store:
            async with WebhookSink(sink_config(receiver.url)) as sink:
                outbox = Outbox(store, [sink])
                await outbox.start()
                resumed = outbox.stats()["hook"].depth
                await asyncio.wait_for(outbox.wait_settled(), 30)
                await outbox.stop()
            assert await store.counts() == {}

    assert before_kill > ANSWERED
    assert resumed >= FINGERPRINTS * EVENTS - ANSWERED  # answered ones may miss their ack
    docs = [request.json() for request in receiver.requests]
    seen_before_kill = {doc["id"] for doc in docs[:before_kill]}
    expected = {
        f"fp{f}:{seq}": alert(f"fp{f}", seq) for f in range(FINGERPRINTS) for seq in range(EVENTS)
    }
    # Every alert arrived, exactly as enqueued; a repeat is always the same alert (same id).
    assert {doc["id"] for doc in docs} == set(expected)
    assert all(doc == expected[doc["id"]] for doc in docs)
    # Each fingerprint's alerts first arrived in the order they were enqueued.
    first_arrivals: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for doc in docs:
        if doc["id"] not in seen:
            seen.add(doc["id"])
            first_arrivals[doc["fingerprint"]].append(int(doc["values"]["seq"]))
    assert first_arrivals == {f"fp{f}": list(range(EVENTS)) for f in range(FINGERPRINTS)}
    # Repeated only what the killed process had sent but not recorded as delivered.
    repeated = [doc["id"] for doc in docs[before_kill:] if doc["id"] in seen_before_kill]
    assert set(repeated) >= {doc["id"] for doc in docs[ANSWERED:before_kill]}
    assert len(docs) == len(expected) + len(repeated)
