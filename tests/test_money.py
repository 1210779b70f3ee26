"""Wire amounts become exact Decimals or a BadResponse naming source, asset and field."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch import money
from balwatch.errors import BadResponse
from balwatch.money import optional_amount, parse_amount, required_amount


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("0", Decimal("0")),
        ("4210.55", Decimal("4210.55")),
        ("0.00000001", Decimal("0.00000001")),
        ("1e-8", Decimal("1e-8")),
        (".5", Decimal("0.5")),
        ("9" * 41, Decimal("9" * 41)),
        ("0." + "0" * 39 + "1", Decimal("1e-40")),
        (12, Decimal(12)),
        (Decimal("0.1"), Decimal("0.1")),
        (
            "123456789012345678901234567890.123456789",
            Decimal("123456789012345678901234567890.123456789"),
        ),
    ],
)
def test_valid_amounts_are_exact(wire: object, expected: Decimal) -> None:
    value = parse_amount(wire, source="bitso", asset="USDT", field="available")
    assert value == expected
    assert str(value) == str(expected)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("NaN", "not finite"),
        ("Infinity", "not finite"),
        ("-Infinity", "not finite"),
        (Decimal("NaN"), "not finite"),
        (Decimal("Infinity"), "not finite"),
        ("1,5", "not a decimal"),
        ("", "not a decimal"),
        (" 1", "not a decimal"),
        ("1 ", "not a decimal"),
        ("1_000", "not a decimal"),
        ("\u0661", "not a decimal"),
        ("1" * 101, "not a decimal"),
        (10**41 + 1, "out of range"),
        (2**200, "implausibly large"),
        (10**50, "implausibly large"),
        ("0x10", "not a decimal"),
        ("1e999999", "out of range"),
        ("1e100", "out of range"),
        ("-5", "negative"),
        ("1e-41", "out of range"),
        ("0." + "0" * 41, "decimal places"),
        ("1" + "0" * 41, "out of range"),
        ("0." + "0" * 40 + "1", "decimal places"),
        ("0e999999", "out of range"),
        (Decimal("0E+999999999"), "out of range"),
        (Decimal("1E-99999"), "out of range"),
        (True, "a boolean"),
        (False, "boolean"),
        (None, "got null"),
        ({"v": 1}, "got an object"),
        ([1], "got a list"),
        (1.5, "got a float"),
    ],
)
def test_invalid_amounts_name_source_asset_and_field(wire: object, reason: str) -> None:
    with pytest.raises(BadResponse) as info:
        parse_amount(wire, source="coinw", asset="BTC", field="onOrders")
    err = info.value
    assert (err.source, err.asset, err.field) == ("coinw", "BTC", "onOrders")
    assert reason in str(err)
    assert "coinw" in str(err) and "BTC" in str(err) and "onOrders" in str(err)


def test_missing_optional_is_none_and_missing_required_is_an_error() -> None:
    row: dict[str, object] = {"available": "1", "locked": None}
    assert optional_amount(row, "hold", source="kunacore", asset="USDT") is None
    assert optional_amount(row, "locked", source="kunacore", asset="USDT") is None
    with pytest.raises(BadResponse, match="field hold"):
        required_amount(row, "hold", source="kunacore", asset="USDT")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.decimals(), st.booleans(), st.none()))
def test_any_input_gives_a_decimal_or_bad_response(wire: object) -> None:
    try:
        value = parse_amount(wire, source="s", asset="A", field="f")
    except BadResponse:
        return
    assert isinstance(value, Decimal) and value.is_finite() and value >= 0


def _outcome(text: str) -> Decimal | str:
    try:
        return parse_amount(text, source="bitso", asset="USDT", field="total")
    except BadResponse as exc:
        return f"rejected: {exc.message}"


@given(st.text(alphabet="0123456789.", max_size=90))
@settings(max_examples=500)
def test_plain_text_shortcut_agrees_with_the_full_checks(text: str) -> None:
    """Plain decimal text skips the checks; it must get exactly what the checks would say."""
    fast = _outcome(text)
    shortcut, money._PLAIN = money._PLAIN, re.compile(r"(?!)")  # matches nothing
    try:
        full = _outcome(text)
    finally:
        money._PLAIN = shortcut
    assert fast == full and str(fast) == str(full)


# --- plain_amounts: a whole answer's amounts in one check ------------------------------------

FIELDS = ("total", "available")
plain_like = st.text(alphabet="0123456789.,", max_size=50)
items = st.lists(
    st.one_of(
        st.fixed_dictionaries({name: plain_like for name in FIELDS}),
        st.fixed_dictionaries(
            {"total": plain_like},
            optional={"available": st.one_of(plain_like, st.none(), st.integers(), st.text())},
        ),
        st.lists(plain_like, max_size=2),
    ),
    max_size=5,
)


@given(items)
@settings(max_examples=1000)
def test_plain_amounts_agree_with_reading_each_amount_checked(answer: list[object]) -> None:
    """The batch either declines (None) or gives exactly what the checked reading gives."""
    batch = money.plain_amounts(answer, FIELDS)
    if batch is None:
        return
    assert len(batch) == len(answer)
    for item, amounts in zip(answer, batch, strict=True):
        assert isinstance(item, dict)
        for name, amount in zip(FIELDS, amounts, strict=True):
            checked = required_amount(item, name, source="bitso", asset="X")
            assert amount == checked and str(amount) == str(checked)


def test_plain_amounts_take_the_batch_for_a_plain_answer() -> None:
    answer = [{"total": "1.50", "available": "0", "x": 1}, {"total": "7", "available": "0.1"}]
    assert money.plain_amounts(answer, FIELDS) == [
        (Decimal("1.50"), Decimal("0")),
        (Decimal("7"), Decimal("0.1")),
    ]
    assert money.plain_amounts([], FIELDS) == []


@pytest.mark.parametrize(
    "second",
    [
        {"total": "1,5", "available": "2"},  # two plain-looking halves: must not split
        {"total": "1", "available": None},
        {"total": "1"},
        {"total": "1e5", "available": "2"},
        {"total": Decimal("1"), "available": "2"},
        ["1", "2"],
    ],
)
def test_plain_amounts_decline_anything_else(second: object) -> None:
    assert money.plain_amounts([{"total": "1", "available": "2"}, second], FIELDS) is None
