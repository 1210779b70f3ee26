"""Reading a decoded balance answer, shared by the adapters: shape checks, codes, extras.

Every helper raises :class:`BadResponse` naming the source (and the asset and field where
known) for an answer of the wrong shape. What a source's fields mean stays in its own module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from decimal import Decimal
from operator import attrgetter
from typing import Any, Final

from balwatch import redact
from balwatch.errors import BadResponse
from balwatch.model import Balance

_VENUE_ASSET: Final = attrgetter("venue", "asset")
# Longest asset or venue code accepted: real ones are a few letters, a token contract's
# address 42 characters. Codes are shown in tables, logs, alerts and metric labels.
MAX_CODE_CHARS: Final = 64


def expect_object(
    value: Any, source: str, what: str, *, asset: str | None = None
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(
            source, f"{what}: expected an object, got {_type_name(value)}", asset=asset
        )
    return value


def expect_list(value: Any, source: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadResponse(source, f"{what}: expected a list, got {_type_name(value)}")
    return value


def expect_str(value: Any, source: str, field: str, *, asset: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise BadResponse(
            source,
            f"expected a non-empty string, got {_type_name(value)}",
            asset=asset,
            field=field,
        )
    return value


def expect_code(value: Any, source: str, field: str, *, asset: str | None = None) -> str:
    """An asset or venue code: a printable string of 1 to :data:`MAX_CODE_CHARS` characters.

    A code with control characters (ESC, BEL) would drive the terminal it is printed on.
    """
    if type(value) is str and 0 < len(value) <= MAX_CODE_CHARS and value.isprintable():
        return value  # the common case, in one test
    code = expect_str(value, source, field, asset=asset)
    raise BadResponse(
        source,
        f"expected a printable code of at most {MAX_CODE_CHARS} characters, got {quote(code)}",
        asset=asset,
        field=field,
    )


def scalar_text(value: Any) -> str | None:
    """A JSON string or number as text, else None (booleans, null, objects, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(Decimal(value))  # via Decimal: str(int) refuses more than 4300 digits
    if isinstance(value, Decimal):
        return str(value)
    return None


def extras(fields: Mapping[str, Any], mapped: Set[str]) -> dict[str, str]:
    """The string and number fields outside ``mapped``, as text; anything else is dropped."""
    found: dict[str, str] = {}
    if fields.keys() <= mapped:  # the common case, checked in C
        return found
    for name, value in fields.items():
        if name not in mapped and (text := scalar_text(value)) is not None:
            found[name] = text
    return found


def distinct(rows: Iterable[Balance], source: str, *, message: str, field: str) -> list[Balance]:
    """``rows`` as a list, or BadResponse at a (venue, asset) listed again: which row is true?

    ``{venue}`` in ``message`` names the venue.
    """
    found = list(rows)
    if len(set(map(_VENUE_ASSET, found))) < len(found):  # checked in C; then find which
        seen: set[tuple[str, str]] = set()
        for row in found:
            key = (row.venue, row.asset)
            if key in seen:
                raise BadResponse(
                    source, message.format(venue=row.venue), asset=row.asset, field=field
                )
            seen.add(key)
    return found


def quote(text: str) -> str:
    """Text read from a decoded answer, for an error message: the installed secrets masked,
    on one line, cut short, in quotes (see :meth:`balwatch.redact.Redactor.quote`).

    Where the answer is at hand, :meth:`balwatch.adapters.http.Response.quote` also masks
    the request's own credentials.
    """
    return redact.installed().quote(text)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | Decimal) else type(value).__name__
    )
