"""The one interface every alert receiver implements (after Alertmanager's ``notify``).

A sink turns one alert document (the JSON of docs/alerts.md) into one delivery and
says how it went. Retry, backoff, ordering and dead letters are the outbox's job, not the
sink's: a sink makes exactly one attempt per call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

AlertDoc = Mapping[str, Any]


class DeliveryError(Exception):
    """One attempt failed. ``retryable`` False means dead letter: retrying cannot help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Sink(ABC):
    """A receiver. Use as ``async with sink:`` so connections are opened and closed."""

    name: str

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
