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
- A replica (``cluster``, :mod:`balwatch.cluster`) commits only alerts of the accounts whose
  leases it holds, each commit with the fencing scope of the keys its alerts are under. An
  alert whose key is no longer held (lost while its commit was held or queued) is dropped:
  the new owner evaluates the same balances from what was committed before. A commit
  refused as :class:`~balwatch.state.base.Fenced` is not held for a retry: the leases are
  checked at once, and the alerts of the keys still held are committed again, once (held
  as after a failed commit when the leases cannot be read).
  balwatch's own alerts are this replica's and always go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from balwatch.alert import Alert, group_text, placed
from balwatch.cluster.membership import Membership
from balwatch.metrics import Metrics
from balwatch.muting import Muting, Routed, routing
from balwatch.outbox.routing import RoutedSink, route
from balwatch.outbox.worker import Outbox
from balwatch.rules.engine import Engine
from balwatch.rules.groups import GROUP_SERIES
from balwatch.rules.history import HistoryChanges
from balwatch.selfalerts import SELF, SelfAlerts
from balwatch.state.base import (
    AlertCommit,
    Fenced,
    RoutedAlert,
    StateChange,
    StateSnapshot,
    StateStore,
    owner_name,
)

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
        cluster: Membership | None = None,
    ) -> None:
        self._store = store
        self._cluster = cluster
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
        if self._cluster is not None:
            snapshot = self._scoped(snapshot, self._cluster)
        try:
            await self._store.flush(snapshot)
        except Fenced:
            assert self._cluster is not None
            self._engine.history.retake(history)  # the keys still held need it next time
            log.warning("state_flush_fenced")
            self._cluster.fenced()
        except Exception:
            self._engine.history.retake(history)  # a forgotten series must still leave
            self._metrics.record_state_write_failure("flush")
            log.exception("state_flush_failed")

    @staticmethod
    def _scoped(snapshot: StateSnapshot, cluster: Membership) -> StateSnapshot:
        """What of ``snapshot`` this replica speaks for, with its scope: every key held."""
        scope = cluster.scope()
        history = snapshot.history
        return StateSnapshot(
            [s for s in snapshot.alerts if scope.covers(owner_name(s))],
            [a for a in snapshot.accounts if scope.covers(a.account)],
            HistoryChanges(
                [k for k in history.forgotten if scope.covers(k[0])],
                [(k, t) for k, t in history.trimmed if scope.covers(k[0])],
                [(k, t, v) for k, t, v in history.samples if scope.covers(k[0])],
            ),
            scope,
        )

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

    async def _commit(self, routed_batch: list[Routed], *, retry: bool = True) -> None:
        cluster = self._cluster
        if cluster is not None:
            kept = [r for r in routed_batch if _ours(cluster, r[0])]
            if len(kept) < len(routed_batch):
                log.info("alerts_dropped_lease_lost", alerts=len(routed_batch) - len(kept))
            routed_batch = kept
            if not routed_batch:
                self._held = []
                self._metrics.set_uncommitted(0)
                return
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
                scope=None if cluster is None else cluster.scope(_owner(a) for a in batch),
            )
            await self._outbox.commit(commit)
        except Fenced:
            assert cluster is not None
            lost = await cluster.verify()
            log.warning("alerts_fenced", alerts=len(batch), keys=sorted(lost)[:20])
            if not lost:  # the leases could not be read: held, and tried as a failed commit
                self._held = routed_batch
                self._metrics.set_uncommitted(len(batch))
                return
            self._held = []
            self._metrics.set_uncommitted(0)
            if retry:  # the alerts of the keys still held go again, once
                await self._commit(routed_batch, retry=False)
            return
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


def _ours(cluster: Membership, alert: Alert) -> bool:
    owner = _owner(alert)
    return owner is None or cluster.holds(owner)


def _owner(alert: Alert) -> str | None:
    """Whose lease ``alert`` is under (:func:`~balwatch.state.base.owner_name`); None for
    balwatch's own alerts, which belong to the replica that raised them."""
    if alert.labels.get("source") == SELF and alert.expression == "":
        return None
    if alert.group is not None or alert.account is None:
        return GROUP_SERIES + alert.rule
    return alert.account
