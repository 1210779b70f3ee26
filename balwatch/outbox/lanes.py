"""What a sink's worker sends next: lanes of deliveries, each sent one batch at a time.

A *lane* is a queue whose batches go out strictly one after another; different lanes are
sent concurrently. A :class:`Batch` is what one send carries: one alert, or a group message
of several. The worker schedules lanes by time and knows nothing of how they are formed;
a :class:`Lanes` policy forms them:

- :class:`AlertLanes`: a lane per fingerprint, a batch per delivery (MQTT, ``generic``);
- :class:`balwatch.outbox.grouping.GroupLanes`: a lane per alert group, a batch per group
  message (chat sinks).

Either way a fingerprint's deliveries are sent in commit order, each batch starting only
after the one before it was settled (acknowledged, or dead-lettered).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from balwatch.sink import AlertGroup
from balwatch.state.base import Delivery

# Lanes to schedule: (lane, when it is due), on the worker's clock.
Due = Sequence[tuple[str, float]]
NOTHING_DUE: Final[Due] = ()


@dataclass(slots=True, eq=False)
class Batch:
    """One send: a single delivery (``group`` None), or the deliveries of a group message."""

    lane: str
    deliveries: list[Delivery]
    group: AlertGroup | None = None
    bundled: bool = False  # a group message's membership is in the store (StateStore.bundle)

    @property
    def attempts(self) -> int:
        """Failed attempts so far: the most any of its deliveries has had."""
        return max(delivery.attempts for delivery in self.deliveries)

    @property
    def ids(self) -> list[int]:
        return [delivery.id for delivery in self.deliveries]


class Lanes(Protocol):
    """How a worker's pending deliveries are formed into lanes and batches."""

    def add(self, delivery: Delivery, now: float) -> Due:
        """Queue a committed delivery; the lanes that became due. Called in id order, but
        for a dead letter retried by hand: that one goes after what of its fingerprint is
        being sent, in id order among the rest."""
        ...

    def take(self, lane: str, now: float) -> Batch | None:
        """The batch to send for a lane that came due; the same one again while it is
        being retried. None: nothing of the lane can go yet (it is due again later)."""
        ...

    def done(self, batch: Batch, now: float) -> Due:
        """The batch was acknowledged or dead-lettered: drop it; the lanes now due."""
        ...


class AlertLanes:
    """A lane per fingerprint; each delivery is its own batch, its lane's head."""

    def __init__(self) -> None:
        # A fingerprint is in here exactly when it has pending deliveries, oldest first.
        self._queues: dict[str, deque[Delivery]] = {}

    def add(self, delivery: Delivery, now: float) -> Due:
        queue = self._queues.get(delivery.fingerprint)
        if queue is not None:
            at = len(queue)
            while at > 1 and queue[at - 1].id > delivery.id:  # the head may be on its way
                at -= 1
            queue.insert(at, delivery)
            return NOTHING_DUE
        self._queues[delivery.fingerprint] = deque((delivery,))
        return ((delivery.fingerprint, now),)

    def take(self, lane: str, now: float) -> Batch:
        return Batch(lane, [self._queues[lane][0]])

    def done(self, batch: Batch, now: float) -> Due:
        queue = self._queues[batch.lane]
        queue.popleft()
        if queue:
            return ((batch.lane, now),)
        del self._queues[batch.lane]
        return NOTHING_DUE
