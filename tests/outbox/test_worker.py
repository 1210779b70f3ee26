"""Per-sink delivery against a real SQLite file, with a scripted sink and a hand-driven clock."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from balwatch import redact
from balwatch.backoff import Backoff
from balwatch.outbox.worker import MAX_RETRY_AFTER, Outbox, SinkStats, SinkWorker
from balwatch.rules.engine import AlertState
from balwatch.secret import Secret
from balwatch.sink import AlertDoc, DeliveryError, Grouping
from balwatch.state.base import AlertCommit, RoutedAlert, SinkCounts, StateChange, StateStore
from balwatch.state.sqlite import SqliteStateStore
from tests.outbox.doubles import FakeClock, ScriptedSink, alert
from tests.waiting import within

HALF = Backoff(base=1.0, cap=60.0, rand=lambda: 0.5)  # delays exactly half the ceiling
NO_DELAY = Backoff(base=1.0, cap=60.0, rand=lambda: 0.0)


def retryable(message: str = "HTTP 503", retry_after: float | None = None) -> DeliveryError:
    return DeliveryError(message, retryable=True, retry_after=retry_after)


def fail_first(count: int, error: BaseException) -> ScriptedSink:
    """A sink whose first ``count`` attempts of every alert fail with ``error``."""
    return ScriptedSink("s", lambda alert, attempt: error if attempt <= count else None)


async def started(
    store: StateStore, *sinks: ScriptedSink, clock: FakeClock, **kwargs: object
) -> Outbox:
    outbox = Outbox(store, sinks, clock=clock, **kwargs)  # type: ignore[arg-type]
    await outbox.start()
    return outbox


async def settled(outbox: Outbox | SinkWorker) -> None:
    await within(outbox.wait_settled(), "every queued delivery to be delivered or dead")


async def test_delivers_and_prunes(store: StateStore, clock: FakeClock) -> None:
    sink = ScriptedSink("s")
    outbox = await started(store, sink, clock=clock)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    await settled(outbox)
    await outbox.stop()

    assert sink.delivered_ids() == ["fp1:1"]
    assert await store.counts() == {}
    assert outbox.stats() == {
        "s": SinkStats(
            delivered=1, failed=0, dead=0, dead_letters=0, depth=0, sending=0, last_error=None
        )
    }


async def test_order_per_fingerprint_is_kept_under_concurrency_and_retries(
    store: StateStore, clock: FakeClock
) -> None:
    rng = random.Random(4)
    failing = {f"fp{f}:{s}" for f in range(20) for s in range(10) if rng.random() < 0.3}

    def script(alert: AlertDoc, attempt: int) -> BaseException | None:
        return retryable() if alert["id"] in failing and attempt <= 2 else None

    yields = {f"fp{f}:{s}": rng.randrange(5) for f in range(20) for s in range(10)}
    sink = ScriptedSink("s", script, yields=lambda alert: yields[alert["id"]])
    outbox = await started(store, sink, clock=clock, backoff=NO_DELAY, concurrency=8)

    await asyncio.gather(
        *(outbox.enqueue(alert(f"fp{f}", s), ["s"]) for s in range(10) for f in range(20))
    )
    await settled(outbox)
    await outbox.stop()

    by_fingerprint: dict[str, list[int]] = defaultdict(list)
    for doc in sink.delivered:
        by_fingerprint[doc["fingerprint"]].append(int(doc["values"]["seq"]))
    assert by_fingerprint == {f"fp{f}": list(range(10)) for f in range(20)}
    assert sink.overlaps == []
    assert 1 < sink.max_sending <= 8
    stats = outbox.stats()["s"]
    assert (stats.delivered, stats.failed, stats.depth) == (200, 2 * len(failing), 0)


async def test_retryable_failure_backs_off_exponentially(
    store: StateStore, clock: FakeClock
) -> None:
    sink = fail_first(2, retryable("HTTP 503"))
    outbox = await started(store, sink, clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["s"])

    assert await clock.sleeping_until() == 0.5  # attempt 1 failed: half of base 1s
    clock.advance(0.49)
    assert len(sink.attempts) == 1
    clock.advance(0.01)
    await sink.wait_attempts(2)
    assert await clock.sleeping_until(after=clock.sleeps) == 0.5 + 1.0  # half of 2s
    clock.advance(1.0)
    await settled(outbox)
    await outbox.stop()

    assert sink.delivered_ids() == ["fp1:1"]
    assert (outbox.stats()["s"].failed, outbox.stats()["s"].last_error) == (2, "HTTP 503")
    assert await store.counts() == {}


async def test_retry_after_is_honoured_for_the_whole_sink(
    store: StateStore, clock: FakeClock
) -> None:
    sink = ScriptedSink(
        "s",
        lambda alert, attempt: (
            retryable("HTTP 429", retry_after=30)
            if alert["id"] == "fp1:1" and attempt == 1
            else None
        ),
    )
    outbox = await started(store, sink, clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    assert await clock.sleeping_until() == 30.0

    sleeps = clock.sleeps
    await outbox.enqueue(alert("fp2", 1), ["s"])  # another series: waits out the limit too
    assert await clock.sleeping_until(after=sleeps) == 30.0
    assert [a["id"] for a in sink.attempts] == ["fp1:1"]

    clock.advance(30)
    await settled(outbox)
    await outbox.stop()
    assert sorted(sink.delivered_ids()) == ["fp1:1", "fp2:1"]


@pytest.mark.parametrize("retry_after", [0.0, 0.2])
async def test_a_retry_after_shorter_than_the_backoff_still_backs_off(
    store: StateStore, clock: FakeClock, retry_after: float
) -> None:
    """A Retry-After of 0 (or an HTTP date in the past: a receiver whose clock is behind)
    must not turn a 429 into a request storm."""
    sink = fail_first(3, retryable("HTTP 429", retry_after=retry_after))
    outbox = await started(store, sink, clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    seen = 0
    for attempt in (1, 2, 3):
        # A worker that retries at once never sleeps towards a deadline: this wait fails.
        deadline = await clock.sleeping_until(after=seen)
        assert deadline == clock.now() + HALF.delay(attempt)
        seen = clock.sleeps
        clock.advance(HALF.delay(attempt))
    await settled(outbox)
    assert len(sink.attempts) == 4
    await outbox.stop()


async def test_retry_after_beyond_the_backoff_cap_is_honoured_up_to_an_hour(
    store: StateStore, clock: FakeClock
) -> None:
    sink = fail_first(1, retryable("HTTP 429", retry_after=600))
    outbox = await started(store, sink, clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    assert await clock.sleeping_until() == 600.0  # not cut to the 60 s backoff cap
    await outbox.stop()

    sink = fail_first(1, retryable("HTTP 429", retry_after=86400))
    clock = FakeClock()
    outbox = await started(store, sink, clock=clock, backoff=HALF)
    assert await clock.sleeping_until() == MAX_RETRY_AFTER == 3600.0
    await outbox.stop()


async def test_dead_letter_is_kept_counted_and_not_retried(
    store: StateStore, clock: FakeClock
) -> None:
    sink = ScriptedSink(
        "s",
        lambda alert, attempt: (
            DeliveryError("HTTP 400: bad request", retryable=False)
            if alert["id"] == "fp1:1"
            else None
        ),
    )
    outbox = await started(store, sink, clock=clock)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    await outbox.enqueue(alert("fp1", 2), ["s"])  # same series: goes on after the dead one
    await settled(outbox)
    await outbox.stop()

    assert [a["id"] for a in sink.attempts] == ["fp1:1", "fp1:2"]
    assert sink.delivered_ids() == ["fp1:2"]
    stats = outbox.stats()["s"]
    assert (stats.delivered, stats.dead, stats.dead_letters, stats.failed) == (1, 1, 1, 0)
    [dead] = await store.dead_letters("s")
    assert (dead.alert["id"], dead.attempts, dead.error) == ("fp1:1", 1, "HTTP 400: bad request")

    again = await started(store, ScriptedSink("s"), clock=clock)  # a restart counts it too
    assert again.stats()["s"].dead_letters == 1
    assert again.stats()["s"].depth == 0
    await again.stop()


@pytest.mark.parametrize(
    ("grouping", "attempts"),
    [
        (None, ["fp1:1", "fp1:2", "fp1:1", "fp1:3"]),
        # grouped, the retried firing and the later one are one message, the later listed
        (Grouping(("rule",), 0.0, 1.0), ["fp1:1", "fp1:2", "fp1:3"]),
    ],
)
async def test_a_dead_letter_retried_by_hand_goes_after_what_is_on_its_way(
    store: StateStore, clock: FakeClock, grouping: Grouping | None, attempts: list[str]
) -> None:
    """:meth:`Outbox.resync` takes in a dead letter made pending again: after the alert's
    send in flight, before its later notifications (id order), each sent once."""
    gate = asyncio.Event()
    gate.set()

    def script(alert: AlertDoc, attempt: int) -> BaseException | None:
        first = alert["id"] == "fp1:1" and attempt == 1
        return DeliveryError("HTTP 400", retryable=False) if first else None

    sink = ScriptedSink("s", script, gate=gate, grouping=grouping)
    outbox = await started(store, sink, clock=clock)
    firing = AlertState(
        fingerprint="fp1", rule="low-available", when="available < 5000", clear=None,
        severity="warning", account="acct", exchange="bitso", venue="bitso", asset="USDT",
        phase="firing", since=0.0, last_notified=0.0, values={},
    )  # fmt: skip
    await outbox.commit(
        AlertCommit(
            [RoutedAlert(alert("fp1", 1), ["s"])], [StateChange("fp1", "low-available", firing)]
        )
    )
    await settled(outbox)
    gate.clear()
    await outbox.enqueue(alert("fp1", 2), ["s"])
    clock.advance(1.0)  # a group's interval
    await sink.wait_attempts(2)  # fp1:2 on its way
    await outbox.enqueue(alert("fp1", 3), ["s"])
    assert (await store.retry_dead(None)).retried != []
    assert await outbox.resync() == 1
    gate.set()
    await sink.wait_attempts(len(attempts) - 1)
    clock.advance(1.0)
    await settled(outbox)
    await outbox.stop()
    assert [a["id"] for a in sink.attempts] == attempts
    assert sink.overlaps == [] and await store.counts() == {}


async def test_a_secret_in_the_receivers_text_is_masked_where_it_is_kept(
    store: StateStore, clock: FakeClock
) -> None:
    """A receiver echoing a configured secret (here URL-encoded): the dead letter, the
    sink's last error and the log line keep the text with the secret masked."""
    token = "xoxb-77/ab+cd=ef"
    redact.install([Secret(token)])
    echoed = quote(token, safe="")
    sink = ScriptedSink(
        "s", lambda alert, attempt: DeliveryError(f"HTTP 400: bad url ...{echoed}", retryable=False)
    )
    outbox = await started(store, sink, clock=clock)
    with capture_logs() as logs:
        await outbox.enqueue(alert("fp1", 1), ["s"])
        await settled(outbox)
    await outbox.stop()
    [dead] = await store.dead_letters("s")
    assert dead.error == "HTTP 400: bad url ...***"
    assert outbox.stats()["s"].last_error == dead.error
    [logged] = [e for e in logs if e["event"] == "delivery_dead_lettered"]
    assert logged["error"] == dead.error


async def test_an_unexpected_exception_is_retried_and_does_not_stop_the_worker(
    store: StateStore, clock: FakeClock
) -> None:
    sink = fail_first(1, KeyError("https://hooks.example/T0KEN"))
    outbox = await started(store, sink, clock=clock, backoff=NO_DELAY)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    await settled(outbox)
    await outbox.enqueue(alert("fp2", 1), ["s"])
    await settled(outbox)
    await outbox.stop()

    assert sink.delivered_ids() == ["fp1:1", "fp2:1"]
    assert outbox.stats()["s"].last_error == "unexpected KeyError"  # no message: may be secret


async def test_a_stuck_sink_does_not_delay_another(store: StateStore, clock: FakeClock) -> None:
    stuck = ScriptedSink("stuck", gate=asyncio.Event())  # never opens
    down = ScriptedSink("down", lambda alert, attempt: retryable("connection refused"))
    fine = ScriptedSink("fine")
    outbox = await started(store, stuck, down, fine, clock=clock, backoff=HALF, concurrency=4)

    for seq in range(50):
        await outbox.enqueue(alert(f"fp{seq % 7}", seq), ["stuck", "down", "fine"])
    await settled(outbox.workers["fine"])

    assert len(fine.delivered) == 50
    assert stuck.delivered == [] and down.delivered == []
    stats = outbox.stats()
    assert (stats["stuck"].depth, stats["stuck"].sending) == (50, 4)
    assert stats["down"].depth == 50
    await outbox.stop()
    assert await store.counts() == {"stuck": SinkCounts(pending=50), "down": SinkCounts(pending=50)}


async def test_restart_resumes_pending_deliveries_in_order(
    state_dir: Path, clock: FakeClock
) -> None:
    store = SqliteStateStore(state_dir)
    await store.open()
    first = ScriptedSink("s", lambda alert, attempt: retryable("HTTP 502"))
    outbox = await started(store, first, clock=clock, backoff=HALF, concurrency=2)
    for seq in range(5):
        await outbox.commit(
            AlertCommit([RoutedAlert(alert(f"fp{f}", seq), ["s"]) for f in range(3)])
        )
    await first.wait_attempts(3)
    await outbox.stop()
    await store.close()

    store = SqliteStateStore(state_dir)
    await store.open()
    second = ScriptedSink("s")
    outbox = await started(store, second, clock=FakeClock(), concurrency=2)
    await settled(outbox)
    await outbox.stop()
    await store.close()

    for f in range(3):
        assert [a["id"] for a in second.delivered if a["fingerprint"] == f"fp{f}"] == [
            f"fp{f}:{seq}" for seq in range(5)
        ]
    assert len(second.delivered) == 15


async def test_committed_but_never_delivered_alerts_survive_a_crash(
    state_dir: Path, clock: FakeClock
) -> None:
    # A crash right after the commit: the store has the alert, no worker ever saw it.
    store = SqliteStateStore(state_dir)
    await store.open()
    await store.commit(AlertCommit([RoutedAlert(alert("fp1", 1), ["mqtt", "slack"])]))
    await store.close()

    store = SqliteStateStore(state_dir)
    await store.open()
    mqtt, slack = ScriptedSink("mqtt"), ScriptedSink("slack")
    outbox = await started(store, mqtt, slack, clock=clock)
    await settled(outbox)
    await outbox.stop()
    await store.close()
    assert mqtt.delivered_ids() == slack.delivered_ids() == ["fp1:1"]


async def test_attempt_counts_survive_a_restart(state_dir: Path, clock: FakeClock) -> None:
    store = SqliteStateStore(state_dir)
    await store.open()
    outbox = await started(store, fail_first(1, retryable()), clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["s"])
    await clock.sleeping_until()
    await outbox.stop()
    await store.close()

    store = SqliteStateStore(state_dir)
    await store.open()
    clock = FakeClock()
    # Due at once after a restart; a second failure backs off as attempt 2.
    outbox = await started(store, fail_first(1, retryable()), clock=clock, backoff=HALF)
    assert await clock.sleeping_until() == 1.0
    await outbox.stop()
    await store.close()


async def test_drain_delivers_what_is_due_then_stops(store: StateStore, clock: FakeClock) -> None:
    sink = ScriptedSink("s")
    outbox = await started(store, sink, clock=clock)
    for seq in range(20):
        await outbox.enqueue(alert(f"fp{seq % 3}", seq), ["s"])
    assert await outbox.drain(timeout=5) is True
    assert len(sink.delivered) == 20
    assert await store.counts() == {}


async def test_drain_leaves_backing_off_and_unfinished_deliveries_pending(
    store: StateStore, clock: FakeClock
) -> None:
    stuck = ScriptedSink("stuck", gate=asyncio.Event())
    down = fail_first(1, retryable())
    outbox = await started(store, stuck, down, clock=clock, backoff=HALF)
    await outbox.enqueue(alert("fp1", 1), ["stuck", "s"])
    await stuck.wait_attempts(1)
    await down.wait_attempts(1)

    assert await outbox.workers["s"].drain(timeout=5) is True  # backing off: not waited for
    assert await outbox.workers["stuck"].drain(timeout=0.05) is False
    assert await store.counts() == {"stuck": SinkCounts(pending=1), "s": SinkCounts(pending=1)}


async def test_enqueue_checks_it_is_started_and_the_sinks_exist(
    store: StateStore, clock: FakeClock
) -> None:
    outbox = Outbox(store, [ScriptedSink("s")], clock=clock)
    with pytest.raises(RuntimeError, match="start"):
        await outbox.enqueue(alert("fp1", 1), ["s"])
    await outbox.start()
    with pytest.raises(ValueError, match="nope"):
        await outbox.enqueue(alert("fp1", 1), ["s", "nope"])
    await outbox.stop()
    assert await store.counts() == {}


async def test_a_cancelled_enqueue_that_committed_is_still_delivered(
    store: StateStore, clock: FakeClock
) -> None:
    sink = ScriptedSink("s")
    outbox = await started(store, sink, clock=clock)
    task = asyncio.create_task(outbox.enqueue(alert("fp1", 1), ["s"]))
    await asyncio.sleep(0)  # one turn of the loop: the commit is queued, not yet done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.wait_attempts(1)
    await settled(outbox)
    await outbox.stop()
    assert sink.delivered_ids() == ["fp1:1"]


async def test_a_failing_sink_warns_once_and_says_when_it_delivers_again(
    store: StateStore, clock: FakeClock
) -> None:
    attempts = iter(range(1, 1000))
    sink = ScriptedSink("s", lambda alert, attempt: retryable() if next(attempts) <= 5 else None)
    outbox = await started(store, sink, clock=clock, backoff=NO_DELAY)
    with capture_logs() as logs:
        await outbox.commit(AlertCommit([RoutedAlert(alert(f"fp{f}", 1), ["s"]) for f in range(5)]))
        await settled(outbox)
    await outbox.stop()

    assert [(e["event"], e["log_level"]) for e in logs if e["log_level"] != "debug"] == [
        ("delivery_failed", "warning"),
        ("sink_delivering_again", "info"),
    ]
    [recovered] = [e for e in logs if e["event"] == "sink_delivering_again"]
    assert recovered["failed_attempts"] == 5
