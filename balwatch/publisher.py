"""The commit path: alerts, with the engine state that produced them, into the state store.

    engine transitions -> publish -> one commit (the alerts routed to their sinks, the
    engine states behind them, the self-alerts firing) -> the outbox's workers, metrics,
    the log and ``on_alerts``

Guarantees:

- One commit at a time, in the order the alerts were published. Pollers and the ticker
  publish concurrently; two commits in flight could each fail and keep only their own
  alerts, or both carry the held ones (a firing delivered again after its resolve), or
  commit out of order. Alerts published meanwhile wait and go, in order, with the next one.
- A commit that fails (disk full, I/O error) keeps its alerts in memory, and they go first
  with the next publish (the daemon publishes every tick): the engine has moved on, so
  dropping them would lose them for good. The failure is logged and counted, not raised.
- A caller cancelled while its alerts wait or are being committed (a stop cancels the
  pollers) does not take the commit down with it: the commit goes on, and :meth:`close`
  commits whatever is still queued, each alert once.
- Each alert's sinks are decided when it is published, the moment of its transition: by
  routing, and with ``muting`` by silences, time intervals and inhibit rules
  (:mod:`balwatch.muting`), which also keeps which sinks got each firing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from balwatch.alert import Alert, group_text, placed
from balwatch.metrics import Metrics
from balwatch.muting import Muting, Routed, routing
from balwatch.outbox.routing import RoutedSink, route
from balwatch.outbox.worker import Outbox
from balwatch.rules.engine import Engine
from balwatch.selfalerts import SelfAlerts
from balwatch.state.base import AlertCommit, RoutedAlert, StateChange, StateSnapshot, StateStore

log = structlog.get_logger("balwatch.publisher")

OnAlerts = Callable[[Sequence[Alert]], None]


class AlertPublisher:
    """Commits alert batches for the daemon, and flushes the engine's other state."""

    def __init__(
        self,
        *,
        store: StateStore,
        outbox: Outbox,
        engine: Engine,
        self_alerts: SelfAlerts,
        sinks: Sequence[RoutedSink],
        metrics: Metrics,
        placement: tuple[str, str | None],
        on_alerts: OnAlerts | None = None,
        muting: Muting | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._engine = engine
        self._self_alerts = self_alerts
        self._sinks = sinks
        self._metrics = metrics
        self._on_alerts = on_alerts
        self._muting = muting
        self.placement = placement  # (instance, external_url): a reload may change them
        self._queued: list[Routed] = []  # published, waiting for the commit in flight
        self._held: list[Routed] = []  # their commit failed: they go first with the next
        self._committing = asyncio.Lock()
        self._commits: set[asyncio.Task[None]] = set()

    def placed(self, alerts: Sequence[Alert]) -> list[Alert]:
        """The alerts with this installation's ``instance`` and ``url``, as they are sent."""
        instance, external_url = self.placement
        return [placed(alert, instance, external_url) for alert in alerts]

    @property
    def held(self) -> int:
        """Alerts whose commit failed, waiting for the next one."""
        return len(self._held)

    async def publish(self, alerts: Sequence[Alert]) -> None:
        """Commit ``alerts``, after any held or queued before them; returns once that
        commit was tried (it may have failed: see :attr:`held`)."""
        if self._muting is not None:
            await self._publish(self._muting.route(alerts))
        else:
            await self._publish([(alert, route(routing(alert), self._sinks, alert.notify))
                                 for alert in alerts])  # fmt: skip

    async def catch_up(self) -> None:
        """Publish the firings owed to sinks whose mute is over (:meth:`Muting.catch_up`)."""
        if self._muting is not None:
            owed = self._muting.catch_up()
            if owed:
                await self._publish(owed)

    async def _publish(self, alerts: Sequence[Routed]) -> None:
        self._queued.extend(alerts)
        if not self._queued and not self._held and not self._committing.locked():
            return
        # The commit runs as a task of its own: cancelling the caller stops its wait only.
        task = asyncio.create_task(self._commit_queued())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def flush(self) -> None:
        """Write the engine state that no alert commit carried: pending timers, account
        liveness, new history samples. A failure is logged and counted, never raised: a
        full or read-only disk must not stop polling and alerting."""
        history = self._engine.history.take_changes()
        snapshot = StateSnapshot(self._engine.states(), self._engine.accounts(), history)
        try:
            await self._store.flush(snapshot)
        except Exception:
            self._engine.history.retake(history)  # a forgotten series must still leave
            self._metrics.record_state_write_failure("flush")
            log.exception("state_flush_failed")

    async def close(self) -> None:
        """At stop, once nothing publishes any more: commit what is still queued (the
        commit lock is fair, so this comes after every commit begun before), then flush."""
        await self.publish([])
        await self.flush()
        if self._held:
            log.error("stopped_with_uncommitted_alerts", alerts=len(self._held))

    async def _commit_queued(self) -> None:
        async with self._committing:
            if not self._queued and not self._held:
                return
            batch = [*self._held, *self._queued]
            self._queued = []
            await self._commit(batch)

    async def _commit(self, routed_batch: list[Routed]) -> None:
        batch = self.placed([alert for alert, _ in routed_batch])
        routed = [
            RoutedAlert(alert.to_json(), sinks)
            for alert, (_, sinks) in zip(batch, routed_batch, strict=True)
        ]
        try:
            engine = self._engine
            states = {(a.fingerprint, a.rule): engine.alert_state(a) for a in batch}
            commit = AlertCommit(
                routed,
                [
                    StateChange(fingerprint, rule, None if state is None else state.copy())
                    for (fingerprint, rule), state in states.items()
                ],
                self._self_alerts.firing(),
            )
            await self._outbox.commit(commit)
        except Exception:
            self._held = routed_batch
            self._metrics.record_state_write_failure("alerts")
            self._metrics.set_uncommitted(len(batch))
            log.exception("outbox_commit_failed", alerts=len(batch))
            return
        self._held = []
        self._metrics.set_uncommitted(0)
        self._metrics.record_alerts(batch)
        self._metrics.set_active(*self._engine.counts())
        for alert in batch:
            log.info(
                "alert",
                transition=alert.event,
                rule=alert.rule,
                account=alert.account,
                asset=alert.asset,
                summary=alert.summary,
                # a portfolio rule's alert says which group (its account may be null)
                **({} if alert.group is None else {"group": group_text(alert.group)}),
            )
        if self._on_alerts is not None:
            self._on_alerts(batch)
