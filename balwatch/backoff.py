"""When to retry: exponential backoff with full jitter for anything that retries (deliveries,
pollers), and the delay a server asks for in ``Retry-After``.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter") draws the delay
uniformly from ``[0, min(cap, base * factor ** (attempt - 1))]``. Spreading retries over
the whole window is what keeps many clients that failed together (every delivery queued
for a broker that just went down) from retrying together.

The random source is injectable so tests can pin the delay exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay policy: ``base`` and ``cap`` in seconds; ``rand`` returns a float in [0, 1)."""

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"need 0 < base <= cap, got base={self.base} cap={self.cap}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay after the ``attempt``-th consecutive failure (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        try:
            return min(self.cap, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # a long outage: factor ** attempt outgrows a float
            return self.cap

    def delay(self, attempt: int) -> float:
        """A delay drawn from ``[0, ceiling(attempt))``."""
        return self.ceiling(attempt) * self.rand()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
