"""Per-series sample history for the window functions of rule expressions.

A series is keyed by (account, venue, asset, metric) and holds time-ordered samples
``(t, value)``; ``t`` is seconds on whatever clock the caller uses (the engine's injectable
clock). Nothing here reads a clock.

Semantics (what ``pct_change(total, 15m)`` means)
-------------------------------------------------
A series is a step function: a sample's value holds until the next sample. So the value
"at" time ``x`` is the newest sample at or before ``x``, and there is none before the first
sample. With ``now`` the evaluation time (normally the time of the poll just recorded) and
``W`` the window:

* current = value at ``now``; base = value at ``now - W``, i.e. the newest sample taken at
  or before ``now - W``. With irregular polls the change therefore spans *at least* W
  (W plus up to one polling gap), never less: a "20% in 15m" rule cannot fire on a 14-minute
  comparison, and a 15-minute window polled every 60s compares with the sample 15-16
  minutes old.
* Window not yet full (no sample at or before ``now - W``: just started, a new asset, or the
  series was forgotten) -> ``None``, no data: the rule neither fires nor resolves until it
  has a full window. No guessing from a partial window.
* After a gap (polls failing, daemon stopped) the base is the last value known before the
  gap, so a drop that happened while nobody was looking is still reported.
* ``delta = current - base``.
* ``pct_change = (current - base) * 100 / |base|``, in percent (-20 = fell by a fifth); the
  sign follows the direction of change even for a negative base. Base 0 -> ``None``.
* ``max_over`` / ``min_over`` = extreme of the step function over ``[now - W, now]``: the
  base value and every sample in ``(now - W, now]``, current included. Same "full window"
  rule as above. Cost is linear in the samples inside the window.

Recording: a sample newer than the last one is appended; one with the same time replaces
the last value (a re-poll at the same instant: newest wins); an older one is ignored and
counted (clocks that step backwards must not rewrite history). Values are exact Decimals;
missing metrics (``None``) are simply not recorded, which leaves the step at its last value.

Memory is bounded twice: samples older than ``retention`` (longest window in use plus
slack) are dropped except the newest of them, which is still the value at the window start;
and each series keeps at most ``max_samples`` (oldest evicted first, counted in
``evicted``). Eviction only ever shortens what is known, so a too-small cap makes long
windows report no data, never a wrong number. Size it to at least longest window / poll
interval + 2. Series of rows that disappear are dropped with :meth:`History.retain`.

A store mirrors the history through :meth:`History.take_changes`: new samples, how far
each series was trimmed, and which series were dropped whole, so that a restart reads back
exactly what a daemon that kept running would hold.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from balwatch.rules.expr import DECIMAL_CONTEXT, WindowFunc

HistoryKey = tuple[str, str, str, str]
"""(account, venue, asset, metric)"""

DEFAULT_SLACK: Final = 60.0
DEFAULT_MAX_SAMPLES: Final = 4096
_HUNDRED: Final = Decimal(100)
# Same context as expressions: results do not depend on the thread's decimal context.
_CTX: Final = DECIMAL_CONTEXT


@dataclass(frozen=True, slots=True)
class HistoryChanges:
    """What a store applies, in this order, to mirror the history since the last take."""

    forgotten: list[HistoryKey]
    """Series dropped whole: delete every stored sample (a series recorded again since then
    has its new samples in ``samples``)."""
    trimmed: list[tuple[HistoryKey, float]]
    """Series that lost old samples: delete the stored ones before this time."""
    samples: list[tuple[HistoryKey, float, Decimal]]
    """Samples recorded or replaced, each series oldest first: write them."""


class _Series:
    """Parallel arrays: float times (8 bytes each) and the Decimal values.

    ``saved`` counts the leading samples a store has already taken, ``trimmed`` whether old
    samples were dropped since (:meth:`History.take_changes`).
    """

    __slots__ = ("saved", "times", "trimmed", "values")

    def __init__(self) -> None:
        self.times: array[float] = array("d")
        self.values: list[Decimal] = []
        self.saved = 0
        self.trimmed = False

    def drop_oldest(self, count: int) -> None:
        del self.times[:count]
        del self.values[:count]
        self.saved = max(0, self.saved - count)
        self.trimmed = True

    def index_at(self, t: float) -> int:
        """Index of the newest sample at or before ``t``; -1 when there is none."""
        return bisect_right(self.times, t) - 1


def change(base: Decimal, current: Decimal) -> Decimal:
    """``delta``: current - base."""
    return _CTX.subtract(current, base)


def percent_change(base: Decimal, current: Decimal) -> Decimal | None:
    """``pct_change``: (current - base) * 100 / |base|; None when the base is zero."""
    if not base:
        return None
    return _CTX.divide(_CTX.multiply(_CTX.subtract(current, base), _HUNDRED), _CTX.abs(base))


def _window_start(now: float, window: float) -> float:
    if not window > 0:  # expressions only produce positive windows; anything else is a bug
        raise ValueError(f"window must be > 0 seconds, got {window!r}")
    return now - window


class History:
    """Bounded sample store with the window functions of rule expressions.

    ``retention`` is the longest window in use (``max(Expression.windows)``); ``slack``
    keeps a little more so an evaluation time slightly behind the newest sample still
    sees a full window.
    """

    def __init__(
        self,
        retention: float,
        *,
        slack: float = DEFAULT_SLACK,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if max_samples < 2:
            raise ValueError("max_samples must be at least 2 (a window needs two samples)")
        self._series: dict[HistoryKey, _Series] = {}
        self._by_account: dict[str, set[HistoryKey]] = {}
        # Series with samples not yet taken by a store: a flush then costs what is new,
        # not a scan of every series.
        self._unsaved: set[HistoryKey] = set()
        self._forgotten: set[HistoryKey] = set()
        self._max_samples = max_samples
        self._slack = slack
        self._keep = 0.0
        self.set_retention(retention)
        self.evicted = 0  # samples dropped by the max_samples cap
        self.ignored = 0  # samples ignored because older than the newest one

    def set_retention(self, retention: float) -> None:
        """Change the longest window (rules reloaded). A longer one fills up over time."""
        if not retention >= 0:
            raise ValueError(f"retention must be >= 0 seconds, got {retention!r}")
        self._keep = retention + self._slack

    @property
    def retention(self) -> float:
        """Seconds of samples kept, slack included."""
        return self._keep

    # -- recording and forgetting

    def record(self, key: HistoryKey, t: float, value: Decimal) -> bool:
        """Add a sample; False when ignored because ``t`` is older than the newest sample."""
        if not math.isfinite(t):
            raise ValueError(f"sample time must be finite, got {t!r}")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
            self._by_account.setdefault(key[0], set()).add(key)
        self._unsaved.add(key)
        times = series.times
        if times:
            last = times[-1]
            if t < last:
                self.ignored += 1
                return False
            if t == last:
                series.values[-1] = value
                series.saved = min(series.saved, len(times) - 1)  # take it again
                return True
        times.append(t)
        series.values.append(value)
        # Keep the newest sample at or before the horizon: it is the value at window start.
        horizon = t - self._keep
        if len(times) > 1 and times[1] <= horizon:
            series.drop_oldest(series.index_at(horizon))
        excess = len(times) - self._max_samples
        if excess > 0:
            series.drop_oldest(excess)
            self.evicted += excess
        return True

    def forget(self, key: HistoryKey) -> bool:
        """Drop one series; True if it existed."""
        if self._series.pop(key, None) is None:
            return False
        self._forgotten.add(key)
        keys = self._by_account[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_account[key[0]]
        return True

    def forget_account(self, account: str) -> int:
        """Drop every series of ``account`` (removed from the config); returns how many."""
        keys = self._by_account.pop(account, set())
        for key in keys:
            del self._series[key]
        self._forgotten.update(keys)
        return len(keys)

    def release(self, account: str) -> int:
        """Drop every series of ``account``, which another replica takes over: as
        :meth:`forget_account`, but the store keeps them. Returns how many."""
        keys = list(self._by_account.get(account, ()))
        for key in keys:
            self.release_series(key)
        return len(keys)

    def release_series(self, key: HistoryKey) -> None:
        """Drop one series here only (another replica takes it over): the store keeps it."""
        if self._series.pop(key, None) is None:
            return
        self._unsaved.discard(key)
        keys = self._by_account[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_account[key[0]]

    def retain(self, account: str, present: Collection[tuple[str, str]]) -> int:
        """After a good poll: drop ``account``'s series whose (venue, asset) is not present.

        A row that disappears and comes back later starts again with an empty window
        instead of comparing with a value from before it vanished. Returns how many were
        dropped.
        """
        gone = [k for k in self._by_account.get(account, ()) if (k[1], k[2]) not in present]
        for key in gone:
            self.forget(key)
        return len(gone)

    # -- reading

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, key: object) -> bool:
        return key in self._series

    def keys(self) -> Iterator[HistoryKey]:
        return iter(self._series)

    def samples(self, key: HistoryKey) -> list[tuple[float, Decimal]]:
        """The retained samples of a series, oldest first (for ``balwatch eval`` and tests)."""
        series = self._series.get(key)
        return [] if series is None else list(zip(series.times, series.values, strict=True))

    def take_changes(self) -> HistoryChanges:
        """What changed since the last call; it counts as saved from now on. What a store
        writes on each flush, at a cost of what changed, not of all it holds."""
        trimmed: list[tuple[HistoryKey, float]] = []
        samples: list[tuple[HistoryKey, float, Decimal]] = []
        for key in self._unsaved:
            series = self._series.get(key)
            if series is None:  # forgotten since
                continue
            times, values, count = series.times, series.values, len(series.times)
            if series.trimmed:
                trimmed.append((key, times[0]))
                series.trimmed = False
            if series.saved == count - 1:  # the usual case: one poll since the last flush
                samples.append((key, times[-1], values[-1]))
            else:
                new = zip(times[series.saved :], values[series.saved :], strict=True)
                samples.extend((key, t, v) for t, v in new)
            series.saved = count
        changes = HistoryChanges(list(self._forgotten), trimmed, samples)
        self._unsaved.clear()
        self._forgotten.clear()
        return changes

    def retake(self, changes: HistoryChanges) -> None:
        """The store could not write ``changes``: hand them out again with the next take
        (the samples of a series whole, which rewrites what was written before)."""
        self._forgotten.update(changes.forgotten)
        for key in {key for key, _ in changes.trimmed} | {key for key, _, _ in changes.samples}:
            series = self._series.get(key)
            if series is not None:
                series.saved = 0
                series.trimmed = True
                self._unsaved.add(key)

    def mark_saved(self, keys: Iterable[HistoryKey] | None = None) -> None:
        """Count every sample (of ``keys``) as saved: just restored from the store."""
        keys = None if keys is None else list(keys)
        for key in self._series if keys is None else keys:
            series = self._series.get(key)
            if series is not None:
                series.saved = len(series.times)
                series.trimmed = False
        if keys is None:
            self._unsaved.clear()
        else:
            self._unsaved.difference_update(keys)

    def sample_count(self) -> int:
        return sum(len(s.values) for s in self._series.values())

    def value_at(self, key: HistoryKey, t: float) -> Decimal | None:
        """The step function at ``t``: the newest sample at or before ``t``, else None."""
        series = self._series.get(key)
        if series is None:
            return None
        i = series.index_at(t)
        return series.values[i] if i >= 0 else None

    def _ends(self, key: HistoryKey, now: float, window: float) -> tuple[Decimal, Decimal] | None:
        """(base, current), or None when the window is not full."""
        series = self._series.get(key)
        if series is None:
            return None
        start = series.index_at(_window_start(now, window))
        if start < 0:
            return None
        return series.values[start], series.values[series.index_at(now)]

    def delta(self, key: HistoryKey, now: float, window: float) -> Decimal | None:
        """current - base (module docstring)."""
        ends = self._ends(key, now, window)
        return None if ends is None else change(*ends)

    def pct_change(self, key: HistoryKey, now: float, window: float) -> Decimal | None:
        """(current - base) * 100 / |base|; None when the base is zero."""
        ends = self._ends(key, now, window)
        return None if ends is None else percent_change(*ends)

    def max_over(self, key: HistoryKey, now: float, window: float) -> Decimal | None:
        """Largest value over ``[now - window, now]`` (module docstring)."""
        span = self._span(key, now, window)
        return None if span is None else max(span)

    def min_over(self, key: HistoryKey, now: float, window: float) -> Decimal | None:
        """Smallest value over ``[now - window, now]`` (module docstring)."""
        span = self._span(key, now, window)
        return None if span is None else min(span)

    def _span(self, key: HistoryKey, now: float, window: float) -> list[Decimal] | None:
        series = self._series.get(key)
        if series is None:
            return None
        start = series.index_at(_window_start(now, window))
        if start < 0:
            return None
        return series.values[start : series.index_at(now) + 1]

    def window_value(
        self, func: WindowFunc, key: HistoryKey, now: float, window: float
    ) -> Decimal | None:
        """Dispatch for :meth:`EvalContext.window_value` implementations."""
        if func == "delta":
            return self.delta(key, now, window)
        if func == "pct_change":
            return self.pct_change(key, now, window)
        if func == "max_over":
            return self.max_over(key, now, window)
        return self.min_over(key, now, window)
