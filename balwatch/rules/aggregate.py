"""The aggregates of one group, kept up to date by delta as member rows come, change and go.

A group's members are rows; each member contributes one value per distinct aggregate
argument of its rule (``available`` for ``sum(available)`` and ``min(available)`` alike), or
None where the row has no data for it. :class:`GroupAggregates` holds the members and
answers ``sum``, ``min``, ``max``, ``avg`` and ``count`` without looking at every member:

* ``sum``/``avg``: a running total per argument, changed by the member's old and new value.
  The total is exact (an unbounded-precision context), so the order of the updates cannot
  matter: after any sequence of puts and removes it equals the sum over the members as they
  are, to the last digit. It is rounded to the expression context (34 digits) when read.
  Contributions are bounded (:data:`MAX_ADJUSTED`) so the exact total stays a few thousand
  digits at worst; one outside the bound is no data, like an arithmetic overflow.
* ``min``/``max``: a binary heap per argument with lazy deletion. A put pushes the new value
  tagged with a fresh sequence number; an entry whose tag is no longer its member's current
  one is stale and dropped when it reaches the top. A put or remove is O(log n), a read O(1)
  amortized, and the heap is rebuilt when stale entries outnumber live ones (O(n), amortized
  O(1) per put). Recomputing the extreme only when its holder changes would be simpler, but
  its worst case is O(n) per update: a wallet that is the group's minimum and changes on
  every poll (the case a floor rule exists for) would rescan a 1,000-row group each time.
* ``count``: the number of members (rows that are there, whatever their values).
* A value with any member's contribution None (a null price, a missing metric) is None: no
  data, never a partial result. ``count`` is never None.
"""

from __future__ import annotations

import decimal
import heapq
import itertools
from collections.abc import Hashable, Iterable
from decimal import Decimal
from typing import Final, Generic, TypeVar

from balwatch.rules.expr import DECIMAL_CONTEXT, AggregateFunc

Member = TypeVar("Member", bound=Hashable)
Values = tuple[Decimal | None, ...]

# A contribution whose adjusted exponent is beyond this is no data (see module docstring):
# real amounts are within 1e-40..1e40, their USD values and ratios far inside 1e+-1000.
MAX_ADJUSTED: Final = 1000
_EXACT: Final = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.InvalidOperation, decimal.Overflow],
)
_ZERO: Final = Decimal(0)
# Heaps are rebuilt once they hold more than this many entries per live member (plus slack).
_STALE_FACTOR: Final = 2
_STALE_SLACK: Final = 16


def usable(value: Decimal | None) -> Decimal | None:
    """``value`` if it can be aggregated, else None: not finite or beyond MAX_ADJUSTED."""
    if value is None or not value.is_finite():
        return None
    if value and not -MAX_ADJUSTED <= value.adjusted() <= MAX_ADJUSTED:
        return None
    return value


class GroupAggregates(Generic[Member]):
    """Members and their contributions to ``args`` arguments, with the aggregates over them.

    ``minimum``/``maximum``: the argument indices some ``min``/``max`` reads (only those keep
    a heap). Contributions must have passed :func:`usable`.
    """

    __slots__ = ("_heaps", "_members", "_nulls", "_seq", "_sums", "_tags")

    def __init__(self, args: int, minimum: Iterable[int] = (), maximum: Iterable[int] = ()) -> None:
        self._members: dict[Member, Values] = {}
        self._tags: dict[Member, int] = {}
        self._sums: list[Decimal] = [_ZERO] * args
        self._nulls: list[int] = [0] * args
        # (argument, sign): sign 1 keeps the smallest on top, -1 the largest.
        self._heaps: dict[tuple[int, int], list[tuple[Decimal, int, Member]]] = {
            **{(i, 1): [] for i in minimum},
            **{(i, -1): [] for i in maximum},
        }
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def members(self) -> Iterable[tuple[Member, Values]]:
        return self._members.items()

    def get(self, member: Member) -> Values | None:
        return self._members.get(member)

    def put(self, member: Member, values: Values) -> bool:
        """Add or update a member; False when it already had exactly these values."""
        old = self._members.get(member)
        if old == values:
            return False
        if old is not None:
            self._account(old, -1)
        self._members[member] = values
        self._account(values, 1)
        if self._heaps:
            tag = next(self._seq)
            self._tags[member] = tag
            for (i, sign), heap in self._heaps.items():
                value = values[i]
                if value is not None:
                    heapq.heappush(heap, (value if sign > 0 else value.copy_negate(), tag, member))
                    if len(heap) > _STALE_FACTOR * len(self._members) + _STALE_SLACK:
                        self._rebuild(i, sign)
        return True

    def remove(self, member: Member) -> bool:
        """Take a member out; False if it was not in."""
        old = self._members.pop(member, None)
        if old is None:
            return False
        self._account(old, -1)
        self._tags.pop(member, None)  # its heap entries are stale from now on
        return True

    def _account(self, values: Values, sign: int) -> None:
        sums, nulls = self._sums, self._nulls
        for i, value in enumerate(values):
            if value is None:
                nulls[i] += sign
            elif sign > 0:
                sums[i] = _EXACT.add(sums[i], value)
            else:
                sums[i] = _EXACT.subtract(sums[i], value)

    def _rebuild(self, i: int, sign: int) -> None:
        heap = [
            (value if sign > 0 else value.copy_negate(), self._tags[member], member)
            for member, values in self._members.items()
            if (value := values[i]) is not None
        ]
        heapq.heapify(heap)
        self._heaps[(i, sign)] = heap

    def _extreme(self, i: int, sign: int) -> Decimal:
        heap = self._heaps[(i, sign)]
        tags = self._tags
        while tags.get(heap[0][2]) != heap[0][1]:  # stale: the member changed or left
            heapq.heappop(heap)
        top = heap[0][0]
        return top if sign > 0 else top.copy_negate()

    def value(self, func: AggregateFunc, arg: int) -> Decimal | None:
        """``func`` over the members (``arg`` ignored for count); None for no data."""
        count = len(self._members)
        if func == "count":
            return Decimal(count)
        if not count or self._nulls[arg]:
            return None
        if func == "sum":
            return DECIMAL_CONTEXT.plus(self._sums[arg])
        if func == "avg":
            return DECIMAL_CONTEXT.divide(self._sums[arg], Decimal(count))
        return self._extreme(arg, 1 if func == "min" else -1)

    def top(self, arg: int, count: int, *, lowest: bool) -> list[tuple[Member, Decimal]]:
        """The ``count`` members with the lowest (or highest) value of ``arg``, ties in member
        order, so the list does not depend on the order members came in; O(n log count)."""
        pairs = [(m, v) for m, values in self._members.items() if (v := values[arg]) is not None]
        if lowest:
            return heapq.nsmallest(count, pairs, key=lambda pair: (pair[1], pair[0]))
        return heapq.nsmallest(count, pairs, key=lambda pair: (pair[1].copy_negate(), pair[0]))
