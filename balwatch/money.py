"""Strict parsing of wire amounts into Decimal. Never through float."""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Final

from balwatch.errors import BadResponse

# Plain decimal notation with optional exponent; rejects "1,5", " 1", "0x10", "NaN", "Infinity".
_AMOUNT_RE: Final = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,4})?")
# Largest magnitude accepted: far beyond any real balance, small enough to keep Decimal cheap.
_MAX_EXPONENT: Final = 40
# Most decimal places accepted: wei is 1e-18; more is noise or an attack on Decimal's cost.
_MAX_SCALE: Final = 40
# Accepted amounts have at most 41 integer and 40 fractional digits, so sums of a few of
# them fit in 200 digits exactly; Inexact is trapped so a bug cannot round silently.
_EXACT: Final = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])


def parse_amount(value: object, *, source: str, asset: str | None, field: str) -> Decimal:
    """Turn a JSON string or number into a finite, non-negative Decimal, or raise BadResponse.

    A balance is never negative; a negative one is bad data, not a low balance to alert on.

    JSON numbers must already be Decimal (parse JSON with ``parse_float=Decimal``) or int.
    """
    if isinstance(value, bool):
        raise BadResponse(source, "amount is a boolean", asset=asset, field=field)
    if isinstance(value, int):
        value = Decimal(value)
    if isinstance(value, str):
        if not _AMOUNT_RE.fullmatch(value):
            shown = value if len(value) <= 32 else value[:32] + "..."
            raise BadResponse(source, f"not a decimal amount: {shown!r}", asset=asset, field=field)
        try:
            value = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
            raise BadResponse(source, "not a decimal amount", asset=asset, field=field) from None
    if not isinstance(value, Decimal):
        raise BadResponse(
            source, f"expected an amount, got {type(value).__name__}", asset=asset, field=field
        )
    if not value.is_finite():
        raise BadResponse(source, f"amount is not finite: {value}", asset=asset, field=field)
    if value < 0:
        raise BadResponse(source, f"amount is negative: {value}", asset=asset, field=field)
    if value and value.adjusted() > _MAX_EXPONENT:
        raise BadResponse(source, "amount is implausibly large", asset=asset, field=field)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_SCALE:
        raise BadResponse(
            source, f"more than {_MAX_SCALE} decimal places", asset=asset, field=field
        )
    return value


def optional_amount(
    container: dict[str, object], key: str, *, source: str, asset: str | None
) -> Decimal | None:
    """The amount under ``key``, or None when the source left it out (or sent null)."""
    value = container.get(key)
    if value is None:
        return None
    return parse_amount(value, source=source, asset=asset, field=key)


def required_amount(
    container: dict[str, object], key: str, *, source: str, asset: str | None
) -> Decimal:
    if key not in container or container[key] is None:
        raise BadResponse(source, "required amount missing", asset=asset, field=key)
    return parse_amount(container[key], source=source, asset=asset, field=key)


def exact_sum(*values: Decimal) -> Decimal:
    """Sum without the default context's 28-digit rounding: totals must match to the last unit."""
    total = Decimal(0)
    for value in values:
        total = _EXACT.add(total, value)
    return total
