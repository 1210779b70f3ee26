"""A group's aggregates kept by delta: after any puts and removes they equal the aggregates
computed from scratch, to the last digit."""

from __future__ import annotations

import decimal
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.rules.aggregate import MAX_ADJUSTED, GroupAggregates, usable
from balwatch.rules.expr import DECIMAL_CONTEXT

D = Decimal
_value = st.one_of(
    st.none(),
    st.decimals(min_value=-(10**15), max_value=10**15, places=6, allow_nan=False),
    st.sampled_from([D("1E-40"), D("9.99E+40"), D("-3.1E+20"), D("0"), D("1E+1000")]),
)
_op = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.one_of(st.none(), st.tuples(_value, _value)),  # None: remove the member
)


def from_scratch(members: dict[str, tuple[D | None, ...]], func: str, arg: int) -> D | None:
    """The definition, with nothing kept between calls."""
    if func == "count":
        return D(len(members))
    column = [values[arg] for values in members.values()]
    if not column or None in column:
        return None
    present = [v for v in column if v is not None]
    if func == "min":
        return min(present)
    if func == "max":
        return max(present)
    with decimal.localcontext(decimal.Context(prec=10_000)):
        total = sum(present, D(0))
    if func == "sum":
        return DECIMAL_CONTEXT.plus(total)
    return DECIMAL_CONTEXT.divide(total, D(len(present)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=60))
def test_kept_by_delta_equals_computed_from_scratch(
    ops: list[tuple[str, tuple[D | None, ...] | None]],
) -> None:
    aggregates: GroupAggregates[str] = GroupAggregates(2, minimum=[0, 1], maximum=[0, 1])
    members: dict[str, tuple[D | None, ...]] = {}
    for member, values in ops:
        if values is None:
            assert aggregates.remove(member) == (member in members)
            members.pop(member, None)
        else:
            usable_values = tuple(usable(v) for v in values)
            aggregates.put(member, usable_values)
            members[member] = usable_values
        for func in ("sum", "min", "max", "avg", "count"):
            for arg in (0, 1):
                assert aggregates.value(func, arg) == from_scratch(members, func, arg), (func, arg)  # type: ignore[arg-type]
    assert len(aggregates) == len(members)


def test_sums_are_exact_whatever_the_order() -> None:
    """1E+40 + 1E-40 - 1E+40 is 1E-40 here, where a 34-digit running sum would say 0."""
    aggregates: GroupAggregates[str] = GroupAggregates(1)
    aggregates.put("big", (D("1E+40"),))
    aggregates.put("small", (D("1E-40"),))
    aggregates.remove("big")
    assert aggregates.value("sum", 0) == D("1E-40")


def test_a_member_that_changes_on_every_update_keeps_the_heaps_small() -> None:
    aggregates: GroupAggregates[str] = GroupAggregates(1, minimum=[0], maximum=[0])
    for i in range(100):
        aggregates.put(f"m{i}", (D(i),))
    for i in range(10_000):
        aggregates.put("m0", (D(i % 300),))
        assert aggregates.value("min", 0) == min(D(1), D(i % 300))
        assert aggregates.value("max", 0) == max(D(99), D(i % 300))
    assert all(len(heap) <= 2 * 100 + 16 for heap in aggregates._heaps.values())


def test_top_lists_the_extremes_ties_by_member() -> None:
    aggregates: GroupAggregates[str] = GroupAggregates(1)
    for member, value in (("d", "5"), ("b", "5"), ("a", "1"), ("c", "9"), ("e", None)):
        aggregates.put(member, (None if value is None else D(value),))
    assert aggregates.top(0, 3, lowest=False) == [("c", D(9)), ("b", D(5)), ("d", D(5))]
    assert aggregates.top(0, 2, lowest=True) == [("a", D(1)), ("b", D(5))]


def test_values_beyond_the_bound_are_no_data() -> None:
    assert usable(D(f"1E+{MAX_ADJUSTED}")) == D(f"1E+{MAX_ADJUSTED}")
    assert usable(D(f"1E+{MAX_ADJUSTED + 1}")) is None
    assert usable(D(f"1E-{MAX_ADJUSTED + 1}")) is None
    assert usable(D("Infinity")) is None
    assert usable(D(0)) == 0
