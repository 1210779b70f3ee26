"""``summary``/``description`` templates: ``{name}`` fields checked when the rule is loaded.

Templates are rendered at 3 a.m. on an alert path, so everything that can go wrong is
found at load time instead: the syntax is a strict subset of :meth:`str.format` with plain
names only. ``{{`` and ``}}`` are literal braces. Attribute access (``{a.b}``), indexing
(``{a[0]}``), conversions (``{a!r}``), format specs (``{a:.2f}``) and positional fields
(``{}``, ``{0}``) are rejected with a message and the offset of the problem, so the loader
can point at a column. A spec is rejected rather than applied because a missing value
renders as ``n/a``, which no numeric spec could format.

Field names (:data:`FIELDS`): ``account``, ``exchange``, ``venue``, ``asset``, ``rule``,
``severity``, every balance metric, ``age``, ``failures`` and ``values`` (the values the
``when`` expression read, as ``name=value`` pairs; the only way to show a
``pct_change(total, 15m)`` in a summary). Rules with ``group_by`` also have ``group``
(``asset=USDT``) and ``members`` (the rows that weigh most in the value, ``name=value``).

Rendering never raises: a missing value (``None`` or absent) renders as ``n/a``;
Decimals render in plain positional notation (never ``1E+3``), ages as ``1h2m5s``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Final

from balwatch.model import METRICS
from balwatch.money import decimal_text

ROW_FIELDS: Final = frozenset({"venue", "asset", *METRICS})
"""Fields that only a row has: an account-scope rule may not use them."""
GROUP_FIELDS: Final = frozenset({"group", "members"})
"""Fields that only a group has: only rules with ``group_by`` may use them."""
FIELDS: Final = frozenset(
    {
        "account",
        "exchange",
        "rule",
        "severity",
        "age",
        "failures",
        "values",
        *ROW_FIELDS,
        *GROUP_FIELDS,
    }
)
MISSING: Final = "n/a"

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_LIST: Final = ", ".join(sorted(FIELDS))


class TemplateError(ValueError):
    """A template that cannot be loaded; ``offset`` is the 0-based index in the text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def duration_text(seconds: Decimal) -> str:
    """Whole seconds as ``1h2m5s``/``45s``: readable in a chat message."""
    total = int(seconds)
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Template:
    """A parsed template; construct to validate (raises :class:`TemplateError`)."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text: Final = text
        # Literal text at even indices, field names at odd ones.
        self._parts: Final[tuple[str, ...]] = _parse(text)
        self.fields: Final = frozenset(self._parts[1::2])

    def render(self, values: Mapping[str, object]) -> str:
        """Substitute fields from ``values``; never raises (see module docstring)."""
        out = []
        for i, part in enumerate(self._parts):
            out.append(part if i % 2 == 0 else _text(values.get(part)))
        return "".join(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _text(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def _parse(text: str) -> tuple[str, ...]:
    parts: list[str] = []
    literal: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "}":
            if text.startswith("}}", pos):
                literal.append("}")
                pos += 2
                continue
            raise TemplateError("single '}' in template; write '}}' for a literal brace", pos)
        if char != "{":
            literal.append(char)
            pos += 1
            continue
        if text.startswith("{{", pos):
            literal.append("{")
            pos += 2
            continue
        end = text.find("}", pos + 1)
        if end < 0:
            raise TemplateError("'{' is never closed; write '{{' for a literal brace", pos)
        _check_field(text[pos + 1 : end], pos + 1)
        parts.append("".join(literal))
        parts.append(text[pos + 1 : end])
        literal = []
        pos = end + 1
    parts.append("".join(literal))
    return tuple(parts)


def _check_field(body: str, offset: int) -> None:
    """Reject anything but a known plain name, naming what was tried."""
    if not body:
        raise TemplateError(f"empty field '{{}}'; name a field: {_FIELD_LIST}", offset)
    match = _NAME_RE.match(body)
    name = match.group(0) if match else ""
    rest = offset + len(name)
    if len(name) < len(body):
        char = body[len(name)]
        unsupported = {
            ".": ("attribute access", "is"),
            "[": ("indexing", "is"),
            "!": ("conversions like !r", "are"),
            ":": ("format specs", "are"),
            "{": ("nested fields", "are"),
        }.get(char)
        if unsupported is None:
            raise TemplateError(
                f"invalid field '{{{body}}}'; fields are plain names: {_FIELD_LIST}",
                offset if not name else rest,
            )
        problem, verb = unsupported
        raise TemplateError(
            f"{problem} in template fields {verb} not supported; write a plain name like "
            f"{{{name or 'available'}}}",
            rest,
        )
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"expected one of {_FIELD_LIST}"
        raise TemplateError(f"unknown template field '{name}'; {hint}", offset)
