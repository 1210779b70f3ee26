"""The one interface every alert receiver implements (after Alertmanager's ``notify``).

A sink turns one alert document (the JSON of docs/alerts.md), or one group of them, into
one delivery and says how it went. Retry, backoff, ordering, grouping, pacing and dead
letters are the outbox's job, not the sink's: a sink makes exactly one attempt per call, and
says through :attr:`Sink.grouping` and :attr:`Sink.pacing` how the outbox should feed it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

AlertDoc = Mapping[str, Any]


class DeliveryError(Exception):
    """One attempt failed. ``retryable`` False means dead letter: retrying cannot help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Grouping:
    """Alerts whose ``by`` fields are equal go out together, one message per group
    (Alertmanager's aggregation groups): the first ``wait`` seconds after a group's first
    alert, then at most every ``interval`` seconds while more arrive."""

    by: tuple[str, ...]  # alert fields (rule, account, ...) or label names
    wait: float
    interval: float


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` messages in any ``seconds``: a receiver's documented limit."""

    count: int
    seconds: float


@dataclass(frozen=True, slots=True)
class AlertGroup:
    """One group message: its alerts, latest notification per fingerprint, firing ones
    first. ``id`` names the message: the same on every attempt and after a restart."""

    id: str
    labels: Mapping[str, str]  # the grouping fields and their values
    alerts: Sequence[AlertDoc]


class Sink(ABC):
    """A receiver. Use as ``async with sink:`` so connections are opened and closed."""

    name: str
    # None: every alert is its own message (send); else groups go out (send_group).
    grouping: Grouping | None = None
    # The receiver's limits: the outbox starts no send that would exceed one of them.
    pacing: tuple[Rate, ...] = ()

    @abstractmethod
    async def start(self) -> None:
        """Open connections; a sink that cannot connect yet still starts (and retries)."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is in flight and release connections."""

    def connected(self) -> bool:
        """Whether a send could go out now; connectionless sinks always can."""
        return True

    @abstractmethod
    async def send(self, alert: AlertDoc) -> None:
        """Deliver one alert; return only once the receiver acknowledged it.

        Raises :class:`DeliveryError` on failure; never another exception type.
        """

    async def send_group(self, group: AlertGroup) -> None:
        """Deliver one group message, as :meth:`send` does one alert; sinks that set
        :attr:`grouping` implement it."""
        raise DeliveryError(f"sink {self.name} does not send groups", retryable=False)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
