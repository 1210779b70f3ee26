"""Grouping for chat sinks: one message per alert group, after Alertmanager's dispatcher.

Alerts whose grouping fields (:attr:`Grouping.by`) are equal form a group. A group's first
message goes out ``wait`` seconds after its first alert arrived, so a storm that starts
together is one message; after that, what arrives goes out at most every ``interval``
seconds after the group's previous message. A group idle for longer than ``interval``
starts over with ``wait``.

Durable like any delivery: a group message is built from committed outbox rows and, before
its first attempt, its membership is recorded in the store (:meth:`StateStore.bundle`); it
is acknowledged, failed or dead-lettered as a whole. A process killed after sending but
before the acknowledgement was written sends that same message again after the restart
(same id, same alerts), at once, and what arrived meanwhile goes in later messages.

A message lists each fingerprint once, with its latest notification in the message (an
alert that fired and resolved within ``wait`` shows as resolved); the others of that
fingerprint in the message are acknowledged with it. Per fingerprint, order still holds:
a group message takes only the oldest pending deliveries of each of its fingerprints, and
a fingerprint whose oldest delivery waits in another group (its labels changed) or is in a
message being sent waits for that one.

State is in memory, one entry per group key seen; keys come from rules, accounts and labels,
so their number is bounded by the configuration.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from balwatch.alert import SEVERITY_RANK, group_text
from balwatch.outbox.lanes import NOTHING_DUE, Batch, Due
from balwatch.sink import AlertDoc, AlertGroup, Grouping
from balwatch.state.base import Delivery

# Grouping names that are fields of the alert document; any other name is a label.
ALERT_FIELDS: Final = frozenset(
    {"rule", "severity", "account", "exchange", "venue", "asset", "instance", "group"}
)
# Lanes of messages bundled by an earlier run start with this (group lanes are JSON lists).
_RESTORED: Final = "message:"


def group_labels(alert: AlertDoc, by: Iterable[str]) -> dict[str, str]:
    """The grouping fields of ``alert`` and their values; an absent one is ``""`` (so alerts
    without an account or asset, such as those of portfolio rules, group together); a
    portfolio rule's ``group`` reads ``asset=USDT``."""
    labels = alert.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    found: dict[str, str] = {}
    for name in by:
        value = alert.get(name) if name in ALERT_FIELDS else labels.get(name)
        if isinstance(value, Mapping):  # a portfolio rule's group, as its alerts show it
            found[name] = group_text(value)
        else:
            found[name] = "" if value is None else str(value)
    return found


def message_id(sink: str, delivery_ids: Iterable[int]) -> str:
    """A group message's id: its sink and deliveries (delivery ids are never reused)."""
    text = f"{sink}:{','.join(map(str, delivery_ids))}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def build_group(message: str, labels: Mapping[str, str], deliveries: list[Delivery]) -> AlertGroup:
    """The message's alerts: the latest notification per fingerprint; firing and repeat ones
    first, most severe first, then the resolved ones; otherwise in commit order."""
    latest: dict[str, tuple[int, AlertDoc]] = {}
    for delivery in sorted(deliveries, key=lambda d: d.id):
        first = latest.get(delivery.fingerprint, (delivery.id, delivery.alert))[0]
        latest[delivery.fingerprint] = (first, delivery.alert)

    def order(item: tuple[int, AlertDoc]) -> tuple[int, int, int]:
        first, alert = item
        if alert.get("event") == "resolved":
            return (1, 0, first)
        return (0, -SEVERITY_RANK.get(str(alert.get("severity")), -1), first)

    alerts = [alert for _, alert in sorted(latest.values(), key=order)]
    return AlertGroup(message, dict(labels), alerts)


@dataclass(slots=True, eq=False)
class _Entry:
    """A pending delivery in its fingerprint's queue, with the lane (group) it belongs to."""

    lane: str
    delivery: Delivery
    taken: bool = False  # in a message being sent


@dataclass(slots=True, eq=False)
class _Group:
    labels: dict[str, str]
    # Fingerprint -> how many of its deliveries wait for this group's next message.
    waiting: dict[str, int] = field(default_factory=dict)
    current: Batch | None = None  # the message being sent, or retried
    scheduled: bool = False  # the worker will take this lane when it is due
    blocked: bool = False  # came due, but each of its alerts waits for another message first
    flushed_at: float | None = None  # when its latest message was first taken
    restored: bool = False  # a message an earlier run bundled: sent again, then forgotten


class GroupLanes:
    """A lane per alert group (:class:`~balwatch.outbox.lanes.Lanes`); see the module."""

    def __init__(self, sink: str, grouping: Grouping) -> None:
        self._sink = sink
        self._grouping = grouping
        self._groups: dict[str, _Group] = {}
        # Per fingerprint, its pending deliveries oldest first; those in a message at the head.
        self._queues: dict[str, deque[_Entry]] = {}

    def add(self, delivery: Delivery, now: float) -> Due:
        if delivery.message is not None:
            return self._restore(delivery, now)
        labels = group_labels(delivery.alert, self._grouping.by)
        lane = json.dumps(list(labels.values()), ensure_ascii=False)
        group = self._groups.get(lane)
        if group is None:
            group = self._groups[lane] = _Group(labels)
        queue = self._queue(delivery.fingerprint)
        at = len(queue)  # the end, but for a dead letter retried by hand (Lanes.add)
        while at and not queue[at - 1].taken and queue[at - 1].delivery.id > delivery.id:
            at -= 1
        queue.insert(at, _Entry(lane, delivery))
        group.waiting[delivery.fingerprint] = group.waiting.get(delivery.fingerprint, 0) + 1
        if group.scheduled or group.current is not None:
            return NOTHING_DUE
        group.scheduled = True
        return ((lane, self._due(group, now)),)

    def take(self, lane: str, now: float) -> Batch | None:
        group = self._groups[lane]
        group.scheduled = group.blocked = False
        batch = group.current
        if batch is None:
            batch = self._gather(lane, group)
            if batch is None:  # every fingerprint of it waits for another message first
                group.blocked = True
                return None
            group.current, group.flushed_at = batch, now
        elif group.restored and not self._heads(batch):
            group.blocked = True  # an older message of an earlier run shares an alert
            return None
        if batch.group is None:
            first = batch.deliveries[0].message  # set when an earlier run bundled it
            message = first or message_id(self._sink, batch.ids)
            batch.group = build_group(message, group.labels, batch.deliveries)
        return batch

    def done(self, batch: Batch, now: float) -> Due:
        group = self._groups[batch.lane]
        group.current = None
        heads: set[str] = set()  # lanes whose deliveries may have been waiting for this one
        for delivery in batch.deliveries:  # in id order: each is its fingerprint's head
            queue = self._queues[delivery.fingerprint]
            if queue[0].delivery is delivery:
                queue.popleft()
            else:  # two restored messages share it: the store's rows allow it
                queue.remove(next(entry for entry in queue if entry.delivery is delivery))
            if queue:
                heads.add(queue[0].lane)
            else:
                del self._queues[delivery.fingerprint]
        due: list[tuple[str, float]] = []
        if group.restored:
            del self._groups[batch.lane]
        elif group.waiting and not group.scheduled:
            group.scheduled = True
            due.append((batch.lane, self._resume(group, now)))
        for lane in heads - {batch.lane}:
            other = self._groups[lane]
            if other.blocked:
                other.blocked, other.scheduled = False, True
                due.append((lane, self._resume(other, now)))
        return due

    def _heads(self, batch: Batch) -> bool:
        """Whether each delivery of the batch is the oldest pending one of its fingerprint,
        or follows one of the batch that is."""
        return all(self._queues[d.fingerprint][0].lane == batch.lane for d in batch.deliveries)

    def _restore(self, delivery: Delivery, now: float) -> Due:
        """A delivery an earlier run bundled into a message: that message goes again first."""
        lane = _RESTORED + str(delivery.message)
        self._queue(delivery.fingerprint).append(_Entry(lane, delivery, taken=True))
        group = self._groups.get(lane)
        if group is not None and group.current is not None:
            group.current.deliveries.append(delivery)
            return NOTHING_DUE
        labels = group_labels(delivery.alert, self._grouping.by)
        batch = Batch(lane, [delivery], bundled=True)
        self._groups[lane] = _Group(labels, current=batch, scheduled=True, restored=True)
        return ((lane, now),)

    def _gather(self, lane: str, group: _Group) -> Batch | None:
        """The next message of a group: for each of its fingerprints that is not waiting
        for another message, its oldest deliveries, as long as they are in this group."""
        taken: list[Delivery] = []
        for fingerprint in list(group.waiting):
            queue = self._queues[fingerprint]
            if queue[0].taken or queue[0].lane != lane:
                continue
            count = 0
            for entry in queue:
                if entry.lane != lane:
                    break
                entry.taken = True
                taken.append(entry.delivery)
                count += 1
            left = group.waiting[fingerprint] - count
            if left:
                group.waiting[fingerprint] = left
            else:
                del group.waiting[fingerprint]
        if not taken:
            return None
        taken.sort(key=lambda d: d.id)
        return Batch(lane, taken)

    def _due(self, group: _Group, now: float) -> float:
        """When an idle group that just got a delivery sends: ``interval`` after its last
        message if that is still running, else ``wait`` from now."""
        if group.flushed_at is not None and group.flushed_at + self._grouping.interval > now:
            return group.flushed_at + self._grouping.interval
        return now + self._grouping.wait

    def _resume(self, group: _Group, now: float) -> float:
        """When a group with deliveries left over sends: its wait is over already."""
        if group.flushed_at is None or group.restored:
            return now
        return max(now, group.flushed_at + self._grouping.interval)

    def _queue(self, fingerprint: str) -> deque[_Entry]:
        queue = self._queues.get(fingerprint)
        if queue is None:
            queue = self._queues[fingerprint] = deque()
        return queue
