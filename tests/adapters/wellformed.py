"""Hypothesis strategies for balance answers as the providers document them.

A well-formed answer must parse, into exactly the rows it describes: so each strategy here
draws a wire value together with what a correct parser makes of it, and a property test
compares rows instead of accepting a refusal. :func:`maybe_spoiled` then puts one amount
that no source may send into some answers (a quarter of them), and the test requires the
refusal to name that asset and field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import strategies as st

from balwatch.errors import BadResponse
from balwatch.model import Balance

ACCOUNT = "acct"

_values = st.decimals(
    min_value=0, max_value=10**12, places=8, allow_nan=False, allow_infinity=False
)

# Amounts as plain decimal text: the form most sources send.
amount_texts: st.SearchStrategy[str] = _values.map(lambda d: format(d, "f"))

# (wire value, the Decimal it means): plain text most often, as most sources send it; also
# exponent text and JSON numbers (read as Decimal or int), which every source is allowed.
amounts: st.SearchStrategy[tuple[Any, Decimal]] = st.one_of(
    _values.map(lambda d: (format(d, "f"), d)),
    _values.map(lambda d: (format(d, "f"), d)),
    _values.map(lambda d: (format(d, "f"), d)),
    _values.map(lambda d: (d, d)),
    st.integers(0, 10**15).map(lambda n: (n, Decimal(n))),
    _values.map(lambda d: (format(d, "E"), Decimal(format(d, "E")))),
)

# Never an amount: not finite, negative, not decimal text, or not a string or number.
bad_amounts: st.SearchStrategy[Any] = st.sampled_from(
    [
        "NaN",
        "-Infinity",
        "-1",
        "-0.5",
        "1,5",
        "",
        " 1",
        "1 ",
        "0x10",
        "1e999",
        "1_000",
        "١",  # an Arabic-Indic digit: Decimal() takes it, no source sends it
        True,
        False,
        [],
        {},
        Decimal("-2"),
        -3,
    ]
)


# Free text a source may add to an entry; kept in the row's extras as it is.
notes: st.SearchStrategy[str] = st.text(alphabet="abcdef XYZ-", max_size=8)


def asset_codes(*, lower: bool = False) -> st.SearchStrategy[list[str]]:
    """Up to four asset codes, distinct whatever their case."""
    code = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,7}", fullmatch=True)
    return st.lists(
        code.map(str.lower) if lower else code, max_size=4, unique_by=lambda c: c.upper()
    )


@dataclass(frozen=True)
class Spoiled:
    """Where the one bad amount went: the refusal must name this asset and field."""

    asset: str
    field: str


def maybe_spoiled(
    draw: st.DrawFn, amount_fields: list[tuple[str, dict[str, Any], str]]
) -> Spoiled | None:
    """In a quarter of the answers, replace one of ``amount_fields`` ((asset, the wire
    object holding it, field name)) with a bad amount; say which, or None."""
    if not amount_fields or not draw(st.sampled_from([False, False, False, True])):
        return None
    asset, holder, field = draw(st.sampled_from(amount_fields))
    holder[field] = draw(bad_amounts)
    return Spoiled(asset, field)


Answer = tuple[Any, list[Balance] | Spoiled]


def check_answer(parse: Callable[[Any, str], list[Balance]], source: str, answer: Answer) -> None:
    """A well-formed answer parses into exactly its rows; a spoiled one is refused, naming
    the bad amount's asset and field."""
    body, expected = answer
    if isinstance(expected, Spoiled):
        with pytest.raises(BadResponse) as info:
            parse(body, ACCOUNT)
        named = (info.value.source, info.value.asset, info.value.field)
        assert named == (source, expected.asset, expected.field), info.value
    else:
        assert parse(body, ACCOUNT) == expected
