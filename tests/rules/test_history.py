"""History: step-function semantics, irregular samples, not-yet-full windows, bounds."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.model import Metric
from balwatch.rules.expr import WINDOW_FUNCS, WindowFunc, parse_expression
from balwatch.rules.history import History, HistoryChanges, HistoryKey

D = Decimal
KEY: HistoryKey = ("acct", "spot", "USDT", "total")
M = 60.0


def history(samples: list[tuple[float, str]], retention: float = 3600) -> History:
    h = History(retention)
    for t, value in samples:
        h.record(KEY, t, D(value))
    return h


# --------------------------------------------------------------------------- recording


def test_record_appends_replaces_same_time_and_ignores_older() -> None:
    h = History(3600)
    assert h.record(KEY, 10, D(1))
    assert h.record(KEY, 20, D(2))
    assert h.record(KEY, 20, D(3))  # same instant: newest wins
    assert not h.record(KEY, 15, D(9))  # clock stepped back: ignored, history not rewritten
    assert h.samples(KEY) == [(10, D(1)), (20, D(3))]
    assert h.ignored == 1
    assert h.value_at(KEY, 15) == D(1)


def test_non_finite_times_are_a_bug() -> None:
    h = History(60)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            h.record(KEY, bad, D(1))
    with pytest.raises(ValueError, match="retention"):
        History(-1)
    with pytest.raises(ValueError, match="max_samples"):
        History(60, max_samples=1)
    with pytest.raises(ValueError, match="window"):
        history([(0, "1")]).delta(KEY, 10, 0)


def test_value_at_is_a_step_function() -> None:
    h = history([(100, "1"), (160, "2"), (250, "3")])
    assert h.value_at(KEY, 99.9) is None  # before the first sample: unknown
    assert h.value_at(KEY, 100) == D(1)
    assert h.value_at(KEY, 159.9) == D(1)
    assert h.value_at(KEY, 160) == D(2)
    assert h.value_at(KEY, 10_000) == D(3)
    assert h.value_at(("x", "y", "z", "total"), 100) is None


# --------------------------------------------------------------------------- windows


def test_delta_uses_the_newest_sample_at_or_before_the_window_start() -> None:
    # Irregular polls: 0, 55, 130, 190, 260 s.
    h = history([(0, "100"), (55, "90"), (130, "80"), (190, "70"), (260, "60")])
    # now=260, W=2m: start 140 -> newest at or before is t=130 (80): spans 130 s >= 120 s.
    assert h.delta(KEY, 260, 2 * M) == D(-20)
    # Start exactly on a sample (190 - 60 = 130): that sample is the base.
    assert h.delta(KEY, 190, M) == D(-10)
    # Start just after a sample: the base is that sample, never a later one.
    assert h.delta(KEY, 190.5, M) == D(-10)
    assert h.delta(KEY, 189.9, M) == D(-10)  # now=189.9: current is t=130, base t=55 (90)


def test_window_not_yet_full_is_no_data() -> None:
    h = history([(1000, "100"), (1060, "50")])
    assert h.delta(KEY, 1060, 2 * M) is None  # needs a sample at or before t=940
    assert h.pct_change(KEY, 1060, 2 * M) is None
    assert h.max_over(KEY, 1060, 2 * M) is None
    assert h.min_over(KEY, 1060, 2 * M) is None
    # As soon as the first sample is W old, the window is full.
    assert h.delta(KEY, 1060, M) == D(-50)
    h.record(KEY, 1120, D(40))
    assert h.delta(KEY, 1120, 2 * M) == D(-60)


def test_pct_change() -> None:
    assert history([(0, "200"), (60, "150")]).pct_change(KEY, 60, M) == D(-25)
    assert history([(0, "3"), (60, "2")]).pct_change(KEY, 60, M) == D(
        "-33.33333333333333333333333333333333"
    )
    # A negative base: the sign still follows the direction of change.
    assert history([(0, "-100"), (60, "-150")]).pct_change(KEY, 60, M) == D(-50)
    assert history([(0, "-100"), (60, "-50")]).pct_change(KEY, 60, M) == D(50)
    # Zero base: a percentage is undefined, so no data.
    assert history([(0, "0"), (60, "5")]).pct_change(KEY, 60, M) is None
    assert history([(0, "0.1"), (60, "0.3")]).pct_change(KEY, 60, M) == D(200)


def test_max_and_min_include_base_and_current_only_inside_the_window() -> None:
    h = history([(0, "500"), (100, "10"), (200, "30"), (250, "5"), (300, "20")])
    # now=300, W=150: start 150 -> base t=100 (10); samples 200, 250, 300.
    assert h.max_over(KEY, 300, 150) == D(30)
    assert h.min_over(KEY, 300, 150) == D(5)
    # The 500 at t=0 was replaced at t=100, before the window start: not part of it.
    assert h.max_over(KEY, 300, 200) == D(30)
    # With start 50, the value at the start is still 500 (step held until t=100).
    assert h.max_over(KEY, 300, 250) == D(500)
    # Evaluated in the past: samples after now are not seen.
    assert h.min_over(KEY, 240, 100) == D(10)


def test_gap_compares_with_the_last_value_before_the_gap() -> None:
    h = history([(0, "100"), (60, "100"), (3660, "40")], retention=900)
    # Polls failed for an hour; the drop happened unseen: still reported.
    assert h.pct_change(KEY, 3660, 15 * M) == D(-60)
    assert h.samples(KEY) == [(60, D(100)), (3660, D(40))]


@dataclass
class RowCtx:
    """What the engine does: current metrics plus history windows for one row at ``now``."""

    h: History
    now: float
    current: Decimal | None

    def metric(self, name: Metric) -> Decimal | None:
        return self.current if name == "total" else None

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        return self.h.window_value(func, ("acct", "spot", "USDT", metric), self.now, window)

    def age(self) -> Decimal | None:
        return D(0)

    def failures(self) -> int:
        return 0


def test_sudden_drop_rule_over_an_irregular_series() -> None:
    rule = parse_expression("pct_change(total, 15m) <= -20")
    h = History(rule.windows)
    results = []
    for t, value in [(0, "1000"), (310, "1000"), (600, "990"), (905, "850"), (1210, "780")]:
        h.record(KEY, t, D(value))
        results.append(rule.evaluate(RowCtx(h, t, D(value))))
    # 0..600: no full window yet; 905: base t=0 (-15%); 1210: base t=310 (-22%).
    assert results == [None, None, None, False, True]
    values = rule.values(RowCtx(h, 1210, D(780)))
    assert values == {"total": D(780), "pct_change(total, 15m)": D(-22)}


@pytest.mark.parametrize("func", WINDOW_FUNCS)
def test_window_value_dispatch(func: WindowFunc) -> None:
    h = history([(0, "10"), (60, "5")])
    assert h.window_value(func, KEY, 60, M) == getattr(h, func)(KEY, 60, M)


# --------------------------------------------------------------------------- bounds


def test_retention_keeps_the_sample_at_the_window_start() -> None:
    h = History(600, slack=0)
    for i in range(1000):
        h.record(KEY, i * 60.0, D(i))
    kept = h.samples(KEY)
    # 600 s at 60 s polls: the base (at now - 600) plus the 10 samples after it.
    assert [t for t, _ in kept] == [i * 60.0 for i in range(989, 1000)]
    assert h.delta(KEY, 999 * 60.0, 600) == D(10)
    assert h.retention == 600


def test_retention_with_sparse_samples_keeps_the_anchor() -> None:
    h = History(60, slack=0)
    h.record(KEY, 0, D(1))
    h.record(KEY, 1000, D(2))
    assert h.samples(KEY) == [(0, D(1)), (1000, D(2))]
    h.record(KEY, 1030, D(3))
    assert h.delta(KEY, 1030, 60) == D(2)  # value at 970 is still the t=0 sample


def test_max_samples_evicts_oldest_so_long_windows_go_no_data_not_wrong() -> None:
    h = History(3600, max_samples=10)
    for i in range(30):
        h.record(KEY, i * 10.0, D(i))
    assert len(h.samples(KEY)) == 10
    assert h.evicted == 20
    assert h.delta(KEY, 290, 3600) is None  # window start no longer known: no data
    assert h.delta(KEY, 290, 90) == D(9)  # a window that still fits is exact


def test_set_retention() -> None:
    h = History(60, slack=0)
    for i in range(10):
        h.record(KEY, i * 60.0, D(i))
    assert len(h.samples(KEY)) == 2
    h.set_retention(600)  # a rule with a longer window was loaded: fills up over time
    assert h.delta(KEY, 540, 600) is None
    for i in range(10, 25):
        h.record(KEY, i * 60.0, D(i))
    assert h.delta(KEY, 24 * 60.0, 600) == D(10)


def test_forget_retain_and_forget_account() -> None:
    h = History(600)
    keys = [
        ("a", "spot", "USDT", "total"),
        ("a", "spot", "USDT", "available"),
        ("a", "spot", "BTC", "total"),
        ("a", "margin", "USDT", "total"),
        ("b", "spot", "USDT", "total"),
    ]
    for key in keys:
        h.record(key, 0, D(1))
    assert len(h) == 5
    assert h.retain("a", {("spot", "USDT"), ("spot", "ETH")}) == 2
    assert set(h.keys()) == {keys[0], keys[1], keys[4]}
    assert h.forget(keys[0]) is True
    assert h.forget(keys[0]) is False
    assert keys[0] not in h
    assert h.forget_account("a") == 1
    assert h.forget_account("a") == 0
    assert list(h.keys()) == [keys[4]]
    assert h.sample_count() == 1
    # A row that comes back starts with an empty window.
    h.record(keys[0], 10, D(5))
    assert h.delta(keys[0], 500, 600) is None


# --------------------------------------------------------------------------- properties


def reference(samples: list[tuple[float, Decimal]], now: float, w: float) -> list[Decimal] | None:
    """Brute force: values of the step function over [now - w, now], base first."""
    before = [v for t, v in samples if t <= now - w]
    if not before:
        return None
    return [before[-1], *(v for t, v in samples if now - w < t <= now)]


sample_lists = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5000, allow_nan=False),
        st.decimals(min_value=-(10**6), max_value=10**6, places=4),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    sample_lists,
    st.floats(min_value=0, max_value=6000),
    st.floats(min_value=0.001, max_value=3000),
)
def test_window_functions_match_brute_force(
    raw: list[tuple[float, Decimal]], now: float, w: float
) -> None:
    h = History(10_000)
    accepted: list[tuple[float, Decimal]] = []
    for t, v in raw:  # unsorted times: older ones are ignored, equal ones replace
        if accepted and t < accepted[-1][0]:
            assert not h.record(KEY, t, v)
            continue
        assert h.record(KEY, t, v)
        if accepted and t == accepted[-1][0]:
            accepted[-1] = (t, v)
        else:
            accepted.append((t, v))
    assert h.samples(KEY) == accepted
    span = reference(accepted, now, w)
    if span is None:
        assert h.delta(KEY, now, w) is None
        assert h.max_over(KEY, now, w) is None
        return
    assert h.delta(KEY, now, w) == span[-1] - span[0]
    assert h.max_over(KEY, now, w) == max(span)
    assert h.min_over(KEY, now, w) == min(span)
    pct = h.pct_change(KEY, now, w)
    assert pct is None if span[0] == 0 else pct is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.5, max_value=120), min_size=1, max_size=200),
    st.floats(min_value=1, max_value=900),
    st.floats(min_value=0.001, max_value=1),
)
def test_pruning_never_changes_answers_within_retention(
    gaps: list[float], retention: float, fraction: float
) -> None:
    small, big = History(retention, slack=0), History(1e9)
    t = 0.0
    for i, gap in enumerate(gaps):
        t += gap
        small.record(KEY, t, D(i))
        big.record(KEY, t, D(i))
    w = retention * fraction
    for func in WINDOW_FUNCS:
        assert small.window_value(func, KEY, t, w) == big.window_value(func, KEY, t, w)
    assert len(small.samples(KEY)) <= retention / 0.5 + 2


def test_take_changes_hands_out_each_change_once() -> None:
    h = History(100, slack=0)
    other: HistoryKey = ("acct", "spot", "BTC", "total")
    h.record(KEY, 0, D(1))
    h.record(KEY, 50, D(2))
    assert h.take_changes() == HistoryChanges([], [], [(KEY, 0, D(1)), (KEY, 50, D(2))])
    h.record(KEY, 300, D(3))  # trims the sample before the window start's value
    h.record(KEY, 310, D(4))
    h.record(other, 310, D(5))
    h.forget(other)
    assert h.samples(KEY)[0] == (50, D(2))  # proof that trimming happened
    assert h.take_changes() == HistoryChanges(
        forgotten=[other], trimmed=[(KEY, 50)], samples=[(KEY, 300, D(3)), (KEY, 310, D(4))]
    )
    assert h.take_changes() == HistoryChanges([], [], [])


def test_a_forgotten_account_is_handed_out_whole() -> None:
    h = History(100)
    keys = [("a", "spot", asset, "total") for asset in ("USDT", "BTC")]
    for key in keys:
        h.record(key, 0, D(1))
    h.take_changes()
    h.forget_account("a")
    assert sorted(h.take_changes().forgotten) == sorted(keys)


def test_changes_a_store_could_not_write_are_handed_out_again() -> None:
    h = History(100, slack=0)
    gone: HistoryKey = ("acct", "spot", "BTC", "total")
    h.record(gone, 0, D(9))
    h.record(KEY, 0, D(1))
    h.take_changes()
    h.forget(gone)
    h.record(KEY, 50, D(2))
    h.record(KEY, 300, D(3))  # trims the sample at 0
    failed = h.take_changes()
    h.retake(failed)
    h.record(KEY, 310, D(4))
    again = h.take_changes()
    assert again.forgotten == [gone]
    assert again.trimmed == [(KEY, 50)]
    assert again.samples == [(KEY, 50, D(2)), (KEY, 300, D(3)), (KEY, 310, D(4))]
