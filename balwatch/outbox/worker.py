"""Delivery: one worker per sink, fed by the outbox, and the :class:`Outbox` that wires them.

Each :class:`SinkWorker` mirrors its sink's pending deliveries in memory (loaded from the
store at start, then appended by :meth:`Outbox.commit` after the commit), so the database
is written but never polled. Workers share nothing but the store, so a sink that is down or
slow only ever delays itself.

What goes out together, and in which order, is the sink's :class:`~balwatch.outbox.lanes.Lanes`
policy: a lane per fingerprint and one alert per send for most sinks
(:class:`~balwatch.outbox.lanes.AlertLanes`), a lane per alert group and one message per
group for sinks that group (:class:`~balwatch.outbox.grouping.GroupLanes`). A lane's batches
go out one at a time, the next once the one before was acknowledged or dead-lettered *and*
that was committed; different lanes are sent concurrently, up to ``concurrency`` at a time.
Per fingerprint, deliveries go out in commit order either way.

Pacing: a sink with documented limits (:attr:`Sink.pacing`) gets no send started that would
exceed one (:mod:`balwatch.outbox.pacing`); retries count too.

Retries: a retryable failure puts the batch back with an exponential, fully jittered delay
from its attempt count (so one alert a receiver keeps rejecting delays only its own lane).
A ``retry_after`` from the receiver is a rate limit on the whole endpoint: the worker sends
nothing to that sink until it has passed, up to :data:`MAX_RETRY_AFTER`. Timers live in memory
and use the injectable :class:`Clock`: after a restart every pending delivery is due at once
(a group's after its ``wait``), its attempt count kept. There is no retry limit: an alert is
worth delivering late, and only the receiver can say it never will be (a non-retryable
:class:`~balwatch.sink.DeliveryError`).

The scheduler sleeps on a wake-up event (set by new deliveries and finished sends) bounded
by the earliest retry, group or pacing time; it never polls.

Dead letters retried by hand (``balwatch outbox retry``, maybe from another process) are
pending rows the workers do not hold: :meth:`Outbox.resync`, which the daemon calls when the
store's :attr:`~balwatch.state.base.Changes.outbox` counter moves, takes them in.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from balwatch import redact
from balwatch.backoff import Backoff
from balwatch.outbox.grouping import GroupLanes
from balwatch.outbox.lanes import AlertLanes, Batch, Lanes
from balwatch.outbox.pacing import Pacer
from balwatch.sink import AlertDoc, DeliveryError, Sink
from balwatch.state.base import AlertCommit, Delivery, RoutedAlert, StateStore

log = structlog.get_logger("balwatch.outbox")

# The longest a receiver's Retry-After pauses a sink: past it, the worker asks again.
MAX_RETRY_AFTER: Final = 3600.0


class Clock(Protocol):
    """Time for the scheduler; tests substitute one they advance by hand."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, wake: asyncio.Event, until: float | None) -> None:
        """Return once ``wake`` is set or the clock reaches ``until`` (None: no deadline)."""
        ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def wait(self, wake: asyncio.Event, until: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                await wake.wait()


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters since the worker started, and gauges of what it holds now."""

    delivered: int
    failed: int  # failed attempts that will be retried
    dead: int  # deliveries dead-lettered by this worker
    dead_letters: int  # dead letters kept in the outbox for this sink, earlier runs included
    depth: int  # pending deliveries, those being sent included
    sending: int
    last_error: str | None  # of the latest failed attempt


class SinkWorker:
    """Delivers one sink's deliveries. Start once with :meth:`start`; end with :meth:`drain`
    or :meth:`stop`. The caller owns the sink (``async with sink``)."""

    def __init__(
        self,
        sink: Sink,
        store: StateStore,
        *,
        backoff: Backoff | None = None,
        concurrency: int = 32,
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.sink = sink
        self.name = sink.name
        self._store = store
        self._backoff = backoff or Backoff()
        self._concurrency = concurrency
        self._clock = clock or LoopClock()
        self._lanes: Lanes = (
            AlertLanes() if sink.grouping is None else GroupLanes(sink.name, sink.grouping)
        )
        self._pacer = Pacer(sink.pacing) if sink.pacing else None
        # Lanes with something to send, by when: a lane is in here, or has a batch in a
        # task, or is waiting for another lane (grouping), while it has pending deliveries.
        self._ready: list[tuple[float, int, str]] = []  # heap of (due, tiebreak, lane)
        self._tiebreak = itertools.count()
        self._paused_until = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending = 0
        self._held: set[int] = set()  # ids of the pending deliveries pushed, not yet settled
        self._wake = asyncio.Event()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._delivered = self._failed = self._dead = self._dead_letters = 0
        self._last_error: str | None = None
        self._failing = 0  # failed attempts since the last delivery: logs the first only
        self._settled: set[int] | None = None  # ids settled while resync reads the store

    async def start(self) -> None:
        """Resume what the outbox still holds for this sink, then begin delivering."""
        if self._runner is not None:
            raise RuntimeError(f"worker for sink {self.name} already started")
        for delivery in await self._store.pending(self.name):
            self.push(delivery)
        counts = await self._store.counts()
        self._dead_letters = counts[self.name].dead if self.name in counts else 0
        self._runner = asyncio.create_task(self._run(), name=f"outbox-{self.name}")

    def push(self, delivery: Delivery) -> None:
        """Queue a committed delivery; call in enqueue (id) order, but for dead letters
        retried by hand (:meth:`resync`)."""
        for lane, due in self._lanes.add(delivery, self._clock.now()):
            self._schedule(lane, due)
        self._held.add(delivery.id)
        self._wake.set()

    async def resync(self) -> int:
        """Take in the sink's pending deliveries that this worker does not hold (dead letters
        made pending again by hand); returns how many. Each goes after what of its
        fingerprint is on its way, in id order among the rest (:meth:`Lanes.add`)."""
        self._settled = set()
        try:
            pending = await self._store.pending(self.name)
            counts = await self._store.counts()
        finally:
            settled, self._settled = self._settled, None
        added = 0
        for delivery in pending:
            if delivery.id not in self._held and delivery.id not in settled:
                self.push(delivery)
                added += 1
        self._dead_letters = counts[self.name].dead if self.name in counts else 0
        self._wake.set()
        return added

    async def wait_settled(self) -> None:
        """Return once nothing is pending for this sink: all delivered or dead-lettered."""
        await self._wait_for(lambda: not self._held)

    async def drain(self, timeout: float) -> bool:
        """Shutdown: deliver what is due for up to ``timeout`` seconds, then :meth:`stop`.

        True when nothing due was left. Deliveries backing off or waiting for their group,
        or cut off by the timeout, stay pending in the outbox for the next start (a cut-off
        send may then arrive twice, with the same alert or message id).
        """
        try:
            async with asyncio.timeout(timeout):
                await self._wait_for(self._idle)
        except TimeoutError:
            drained = False
        else:
            drained = True
        await self.stop()
        return drained

    async def stop(self) -> None:
        """Stop at once; unfinished deliveries stay pending in the outbox."""
        tasks = [*self._tasks, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, future in self._waiters:
            future.cancel()

    def stats(self) -> SinkStats:
        return SinkStats(
            delivered=self._delivered,
            failed=self._failed,
            dead=self._dead,
            dead_letters=self._dead_letters,
            depth=len(self._held),
            sending=self._sending,
            last_error=self._last_error,
        )

    # --- scheduling --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock.now()
            while self._ready and self._sending < self._concurrency:
                if self._next_start() > now:
                    break
                lane = heapq.heappop(self._ready)[2]
                batch = self._lanes.take(lane, now)
                if batch is not None:  # None: the lane waits for another (grouping)
                    self._start(batch, now)
            self._notify()
            deadline = None
            if self._ready and self._sending < self._concurrency:
                deadline = self._next_start()
            await self._clock.wait(self._wake, deadline)

    def _next_start(self) -> float:
        """When the earliest due lane may start: its time, a pause, the sink's pace."""
        start = max(self._ready[0][0], self._paused_until)
        return start if self._pacer is None else max(start, self._pacer.next_start())

    def _schedule(self, lane: str, due: float) -> None:
        heapq.heappush(self._ready, (due, next(self._tiebreak), lane))

    def _start(self, batch: Batch, now: float) -> None:
        self._sending += 1
        if self._pacer is not None:
            self._pacer.started(now)
        task = asyncio.create_task(self._attempt(batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    def _idle(self) -> bool:
        """Nothing in flight and nothing due: what :meth:`drain` waits for."""
        due = bool(self._ready) and self._next_start() <= self._clock.now()
        return not self._tasks and not due

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await future

    def _notify(self) -> None:
        if not self._waiters:
            return
        waiting = []
        for predicate, future in self._waiters:
            if future.done():  # the waiter was cancelled
                continue
            if predicate():
                future.set_result(None)
            else:
                waiting.append((predicate, future))
        self._waiters = waiting

    # --- one attempt -------------------------------------------------------------------

    async def _attempt(self, batch: Batch) -> None:
        error: str | None = "outbox write failed"
        dead, retry_after = False, None
        try:
            ours = await self._still_ours(batch)
            if ours:
                error, dead, retry_after = await self._send(batch)
            if retry_after is not None:  # from now on, not once the failure is recorded
                pause = min(retry_after, MAX_RETRY_AFTER)
                self._paused_until = max(self._paused_until, self._clock.now() + pause)
        finally:
            self._sending -= 1
            self._wake.set()
        if ours is None:  # the claim could not be confirmed: unsent, tried again later
            self._settle(batch, error, dead=False, retry_after=None)
            return
        if not ours:
            self._drop(batch)
            return
        try:
            if error is None:
                await self._store.ack_all(batch.ids)
            else:
                await self._store.fail_all(batch.ids, error, dead=dead)
        except Exception:
            # Could not record the outcome: keep the deliveries pending and try again
            # later. A redelivery repeats the alert (or message) id, which consumers dedupe on.
            log.exception("outbox_write_failed", **self._fields(batch))
            error, dead, retry_after = error or "outbox write failed", False, None
        self._settle(batch, error, dead=dead, retry_after=retry_after)

    async def _still_ours(self, batch: Batch) -> bool | None:
        """Whether this worker may still send ``batch``: with replicas, a delivery whose
        claim lapsed (this replica was cut off from the database) may be another's now,
        and both sending it would deliver it twice. A group message goes whole or not at
        all. None: the store could not say (and renew the claim)."""
        try:
            ours = await self._store.claimed(batch.ids)
        except Exception:
            log.exception("outbox_write_failed", **self._fields(batch))
            return None
        return len(ours) == len(batch.ids)

    def _drop(self, batch: Batch) -> None:
        """Forget ``batch`` unsent: another replica sends it (its lane goes on)."""
        for lane, due in self._lanes.done(batch, self._clock.now()):
            self._schedule(lane, due)
        self._held.difference_update(batch.ids)
        if self._settled is not None:
            self._settled.update(batch.ids)
        log.info("delivery_taken_over", **self._fields(batch))

    async def _send(self, batch: Batch) -> tuple[str | None, bool, float | None]:
        """One attempt: (the error, None if delivered; dead; the receiver's retry-after)."""
        if batch.group is not None and not batch.bundled:
            # Before the first attempt, so that a crash after it sends the same message again.
            try:
                await self._store.bundle(batch.group.id, batch.ids)
            except Exception:
                log.exception("outbox_write_failed", **self._fields(batch))
                return "outbox write failed", False, None
            batch.bundled = True
        try:
            if batch.group is None:
                await self.sink.send(batch.deliveries[0].alert)
            else:
                await self.sink.send_group(batch.group)
        except DeliveryError as exc:
            # The receiver's text is kept with a dead letter and logged: masked first.
            error = redact.installed().text(str(exc)) or type(exc).__name__
            return error, not exc.retryable, exc.retry_after
        except Exception as exc:
            # Breaks the sink contract; retry, and keep only the type: the message may hold
            # a URL with a token. The log line (redacted) has the full traceback.
            log.exception("sink_raised_unexpectedly", **self._fields(batch))
            return f"unexpected {type(exc).__name__}", False, None
        return None, False, None

    def _settle(
        self, batch: Batch, error: str | None, *, dead: bool, retry_after: float | None
    ) -> None:
        now = self._clock.now()
        fields = self._fields(batch)
        grouped = batch.group is not None
        if error is not None:
            self._last_error = error
        if error is not None and not dead:
            for delivery in batch.deliveries:
                delivery.attempts += 1
            self._failed += 1
            delay = self._backoff.delay(batch.attempts)
            if retry_after is not None:
                # Never sooner than the backoff: a Retry-After of 0, or a date the receiver's
                # slow clock puts in the past, would otherwise retry at once, over and over.
                delay = min(max(retry_after, delay), MAX_RETRY_AFTER)
                self._paused_until = max(self._paused_until, now + delay)
            self._schedule(batch.lane, now + delay)
            # A sink that is down fails every delivery it holds, over and over: warn once.
            self._failing += 1
            first = self._failing == 1
            if grouped:
                (log.warning if first else log.debug)(
                    "group_delivery_failed", **fields, error=error, retry_in=round(delay, 3)
                )
            else:
                (log.warning if first else log.debug)(
                    "delivery_failed", **fields, error=error, retry_in=round(delay, 3)
                )
            return
        for lane, due in self._lanes.done(batch, now):
            self._schedule(lane, due)
        count = len(batch.deliveries)
        self._held.difference_update(batch.ids)
        if self._settled is not None:
            self._settled.update(batch.ids)
        if error is None:
            self._delivered += count
            if self._failing:
                log.info("sink_delivering_again", sink=self.name, failed_attempts=self._failing)
                self._failing = 0
        else:
            self._dead += count
            self._dead_letters += count
            if grouped:
                log.error("group_dead_lettered", **fields, error=error)
            else:
                log.error("delivery_dead_lettered", **fields, error=error)

    def _fields(self, batch: Batch) -> dict[str, object]:
        if batch.group is not None:
            return {
                "sink": self.name,
                "message": batch.group.id,
                "group": dict(batch.group.labels),
                "alerts": len(batch.group.alerts),
                "deliveries": len(batch.deliveries),
                "attempt": batch.attempts + 1,
            }
        delivery = batch.deliveries[0]
        return {
            "sink": self.name,
            "delivery": delivery.id,
            "alert_id": delivery.alert.get("id"),
            "fingerprint": delivery.fingerprint,
            "attempt": delivery.attempts + 1,
        }


class Outbox:
    """:meth:`commit` stores alerts' deliveries, then hands them to the sinks' workers."""

    def __init__(
        self,
        store: StateStore,
        sinks: Sequence[Sink],
        *,
        backoff: Backoff | None = None,
        concurrency: int = 32,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.workers = {
            sink.name: SinkWorker(
                sink, store, backoff=backoff, concurrency=concurrency, clock=clock
            )
            for sink in sinks
        }
        self._started = False

    async def start(self) -> None:
        """Resume pending deliveries. Call before the first :meth:`enqueue`."""
        counts = await self.store.counts()
        for name in sorted(set(counts) - set(self.workers)):
            log.warning(
                "outbox_sink_not_configured",
                sink=name,
                pending=counts[name].pending,
                dead=counts[name].dead,
            )
        for worker in self.workers.values():
            await worker.start()
        self._started = True

    async def enqueue(self, alert: AlertDoc, sinks: Sequence[str]) -> None:
        """Commit ``alert`` for ``sinks``; returns once it is durable (delivery follows)."""
        await self.commit(AlertCommit([RoutedAlert(alert, sinks)]))

    async def commit(self, commit: AlertCommit) -> None:
        """Commit alerts (and the state that produced them) in one transaction, then hand
        their deliveries to the workers."""
        if not self._started:
            raise RuntimeError("Outbox.start() must run before enqueue")
        for routed in commit.alerts:
            unknown = sorted(set(routed.sinks) - set(self.workers))
            if unknown:
                raise ValueError(f"no worker for sink(s) {', '.join(unknown)}")
        # Pushed by the store right after the commit, even if this caller is cancelled:
        # committed deliveries must not wait for the next restart.
        await self.store.commit(commit, on_commit=self._push)

    async def resync(self) -> int:
        """Every worker takes in the pending deliveries it does not hold
        (:meth:`SinkWorker.resync`); returns how many in all."""
        added = await asyncio.gather(*(w.resync() for w in self.workers.values()))
        return sum(added)

    def _push(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.workers[delivery.sink].push(delivery)

    async def wait_settled(self) -> None:
        """Return once every sink's deliveries are delivered or dead-lettered."""
        await asyncio.gather(*(w.wait_settled() for w in self.workers.values()))

    async def drain(self, timeout: float) -> bool:
        """Shutdown: let every worker deliver what is due for up to ``timeout``; stop them."""
        results = await asyncio.gather(*(w.drain(timeout) for w in self.workers.values()))
        return all(results)

    async def stop(self) -> None:
        """Stop every worker at once; what is unfinished stays pending in the outbox."""
        await asyncio.gather(*(w.stop() for w in self.workers.values()))

    def stats(self) -> dict[str, SinkStats]:
        return {name: worker.stats() for name, worker in self.workers.items()}
