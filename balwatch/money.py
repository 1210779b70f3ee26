"""Strict parsing of wire amounts into Decimal. Never through float."""

from __future__ import annotations

import re
from collections.abc import Collection
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from functools import reduce
from itertools import chain
from operator import itemgetter
from typing import Any, Final

from balwatch.errors import BadResponse

# Largest magnitude accepted: far beyond any real balance, small enough to keep Decimal cheap.
_MAX_EXPONENT: Final = 40
# Most decimal places accepted: wei is 1e-18; more is noise or an attack on Decimal's cost.
_MAX_SCALE: Final = 40
# Longest amount text accepted: 41 integer digits, a point and 40 decimals, with room to spare.
_MAX_TEXT: Final = 100
# Accepted amounts have at most 41 integer and 40 fractional digits, so sums of a few of
# them fit in 200 digits exactly; Inexact is trapped so a bug cannot round silently.
_EXACT: Final = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])
# Plain decimal text inside every bound above: nearly every amount any source sends. Text
# that matches needs no other check, so the common case is one match and one Decimal().
_PLAIN_TEXT: Final = r"[0-9]{1,41}(?:\.[0-9]{1,40})?"
_PLAIN: Final = re.compile(_PLAIN_TEXT)
# Many plain amounts joined by commas: one match checks a whole answer's amounts.
# Possessive: a failed match does not backtrack through every amount before it.
_PLAIN_LIST: Final = re.compile(rf"{_PLAIN_TEXT}(?:,{_PLAIN_TEXT})*+")


def parse_amount(value: object, *, source: str, asset: str | None, field: str) -> Decimal:
    """Turn a JSON string or number into a finite, non-negative Decimal, or raise BadResponse.

    JSON numbers must already be Decimal (parse JSON with ``parse_float=Decimal``) or int.
    A balance is never negative; a negative one is bad data, not a low balance to alert on.
    """
    if type(value) is str:  # the common case first: most sources send amounts as text
        if _PLAIN.fullmatch(value):
            return Decimal(value)
        amount = _from_text(value, source, asset, field)
    elif isinstance(value, Decimal):
        amount = value
        _check_exponent(amount, source, asset, field)
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 140:  # beyond _MAX_EXPONENT digits; avoids a huge str()
            raise BadResponse(source, "amount is implausibly large", asset=asset, field=field)
        amount = Decimal(value)
    else:
        raise BadResponse(
            source, f"expected an amount, got {_json_type(value)}", asset=asset, field=field
        )
    if not amount.is_finite():
        raise BadResponse(source, f"amount is not finite: {amount}", asset=asset, field=field)
    if amount.is_signed() and amount:
        raise BadResponse(source, f"amount is negative: {amount}", asset=asset, field=field)
    if amount and not -_MAX_SCALE <= amount.adjusted() <= _MAX_EXPONENT:
        raise BadResponse(source, "amount is out of range", asset=asset, field=field)
    return amount


def _from_text(text: str, source: str, asset: str | None, field: str) -> Decimal:
    # Text that is not plain decimal (exponents, signs, junk): Decimal() alone is too
    # lenient for wire data, it strips whitespace, accepts "1_000" and non-ASCII digits.
    if (
        0 < len(text) <= _MAX_TEXT
        and text.isascii()
        and text[0] > " "
        and text[-1] > " "
        and "_" not in text
    ):
        try:
            amount = Decimal(text)
        except InvalidOperation:
            pass
        else:
            if "e" in text or "E" in text:
                _check_exponent(amount, source, asset, field)
            elif (dot := text.find(".")) >= 0 and len(text) - dot - 1 > _MAX_SCALE:
                raise BadResponse(source, "too many decimal places", asset=asset, field=field)
            return amount
    shown = text if len(text) <= 32 else text[:32] + "..."
    raise BadResponse(source, f"not a decimal amount: {shown!r}", asset=asset, field=field)


def _check_exponent(amount: Decimal, source: str, asset: str | None, field: str) -> None:
    # as_tuple() is slow, so plain decimal text is checked by its length instead; this
    # is for exponent notation and JSON numbers, where "0E+999999999" is a valid zero
    # that would make exact sums enormous.
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and not -_MAX_SCALE <= exponent <= _MAX_EXPONENT:
        raise BadResponse(source, "amount is out of range", asset=asset, field=field)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", float: "a float"}.get(
        type(value), type(value).__name__
    )


def optional_amount(
    container: dict[str, object], key: str, *, source: str, asset: str | None
) -> Decimal | None:
    """The amount under ``key``, or None when the source left it out (or sent null)."""
    value = container.get(key)
    if type(value) is str and _PLAIN.fullmatch(value):  # parse_amount's fast path, inlined
        return Decimal(value)
    if value is None:
        return None
    return parse_amount(value, source=source, asset=asset, field=key)


def required_amount(
    container: dict[str, object], key: str, *, source: str, asset: str | None
) -> Decimal:
    value = container.get(key)
    if type(value) is str and _PLAIN.fullmatch(value):  # parse_amount's fast path, inlined
        return Decimal(value)
    if value is None:
        raise BadResponse(source, "required amount missing", asset=asset, field=key)
    return parse_amount(value, source=source, asset=asset, field=key)


def plain_amounts(
    items: Collection[Any], fields: tuple[str, str, *tuple[str, ...]]
) -> list[tuple[Decimal, ...]] | None:
    """Each item's amounts under ``fields``, in that order, when every one is plain text.

    The fast path for a whole answer: one regex match over all its amounts instead of one
    per amount, then one Decimal() each. Plain text needs no other check (see
    :func:`parse_amount`), so the rows are exactly what reading each amount checked would
    give. Anything else (an item that is not an object, a field missing or null, a JSON
    number, text that is not plain) gives None: read the amounts one by one with
    :func:`required_amount` and :func:`optional_amount`, which accept or name the bad one.
    """
    if not items:
        return []
    try:
        texts = list(chain.from_iterable(map(itemgetter(*fields), items)))
        joined = ",".join(texts)  # TypeError unless every amount is a string
    except (KeyError, TypeError):
        return None
    # A comma inside an amount would split it into two that each look plain.
    if joined.count(",") != len(texts) - 1 or _PLAIN_LIST.fullmatch(joined) is None:
        return None
    amounts = map(Decimal, texts)  # one iterator, taken len(fields) at a time
    return list(zip(*[amounts] * len(fields), strict=True))


def exact_sum(first: Decimal, *values: Decimal) -> Decimal:
    """Sum without the default context's 28-digit rounding: totals must match to the last unit."""
    return reduce(_EXACT.add, values, first)  # one row's total: reduce keeps the loop in C


def decimal_text(value: Decimal) -> str:
    """Plain positional notation: ``1000`` rather than ``1E+3``, ``0.00000001`` not ``1E-8``."""
    return format(value, "f")
