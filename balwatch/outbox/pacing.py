"""Pacing: no more sends to a receiver than its documented limits allow.

A :class:`~balwatch.sink.Rate` is "at most ``count`` messages in any ``seconds``"; a
receiver may have several (Teams: 4 a second, 60 in 30 s, 100 an hour, ...). The pacer
remembers when its latest sends started and names the earliest time the next may start
without a window holding more than its count. Each window is counted a little longer than
documented (:data:`MARGIN`): the receiver counts arrivals, and network delays vary, so two
sends started a window apart may arrive closer together. Retries count like any send.

The pacer only keeps time; the worker asks it before each start, on the worker's clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from balwatch.sink import Rate

# Each window is counted this much longer than the receiver's.
MARGIN: Final = 0.1


class Pacer:
    """When the next send may start, given the starts so far and the receiver's rates."""

    def __init__(self, rates: Sequence[Rate]) -> None:
        if not rates or any(rate.count < 1 or rate.seconds <= 0 for rate in rates):
            raise ValueError(f"pacing needs rates of count >= 1 per seconds > 0, got {rates}")
        self._windows = [(rate.count, rate.seconds * (1 + MARGIN)) for rate in rates]
        self._starts: deque[float] = deque(maxlen=max(rate.count for rate in rates))

    def next_start(self) -> float:
        """The earliest time a send may start (-inf: at once)."""
        earliest = float("-inf")
        for count, seconds in self._windows:
            if len(self._starts) >= count:
                earliest = max(earliest, self._starts[-count] + seconds)
        return earliest

    def started(self, now: float) -> None:
        """A send started at ``now``."""
        self._starts.append(now)
