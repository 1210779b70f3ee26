"""Issue 4's webhook drill, through the real path: outbox, webhook sink, a real receiver."""

from __future__ import annotations

from pathlib import Path

from balwatch.backoff import Backoff
from balwatch.metrics import Metrics
from balwatch.outbox.worker import Outbox
from balwatch.sinks.webhook import WebhookSink
from balwatch.state.sqlite import SqliteStateStore
from tests.sinks.conftest import ALERT, webhook_config
from tests.waiting import within
from tests.webhooks import Reply, WebhookReceiver


async def run_outbox(tmp_path: Path, receiver: WebhookReceiver, count: int) -> Metrics:
    metrics = Metrics("test")
    sink = WebhookSink(webhook_config(receiver.url))
    async with SqliteStateStore(tmp_path) as store, sink:
        outbox = Outbox(store, [sink], backoff=Backoff(base=0.05, cap=2.0))
        await outbox.start()
        await outbox.enqueue(ALERT, ["ops-hook"])
        await receiver.wait_for(count, timeout=15)
        await within(outbox.wait_settled(), "the outbox to settle")
        metrics.set_outbox(outbox.stats())
        await outbox.stop()
    return metrics


def deliveries(metrics: Metrics, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "balwatch_deliveries_total", {"sink": "ops-hook", "outcome": outcome}
    )


async def test_500_then_429_with_retry_after_then_200_delivers_once_when_allowed(
    tmp_path: Path,
) -> None:
    async with WebhookReceiver(
        Reply(500), Reply(429, headers={"Retry-After": "1"}), Reply(200)
    ) as receiver:
        metrics = await run_outbox(tmp_path, receiver, 3)
        requests = list(receiver.requests)

    assert [r.json()["id"] for r in requests] == [ALERT["id"]] * 3
    assert requests[2].at - requests[1].at >= 1.0  # not before Retry-After allowed it
    assert deliveries(metrics, "delivered") == 1
    assert deliveries(metrics, "failed") == 2
    assert deliveries(metrics, "dead") == 0


async def test_400_is_dead_lettered_at_once_and_visible_in_metrics(tmp_path: Path) -> None:
    async with WebhookReceiver(Reply(400), default=Reply(200)) as receiver:
        metrics = await run_outbox(tmp_path, receiver, 1)
        requests = list(receiver.requests)
    assert len(requests) == 1  # never retried
    assert deliveries(metrics, "dead") == 1
    assert deliveries(metrics, "delivered") == 0
    async with SqliteStateStore(tmp_path) as store:
        dead = await store.dead_letters()
    assert [(d.sink, d.alert["id"]) for d in dead] == [("ops-hook", ALERT["id"])]
    assert "400" in dead[0].error
