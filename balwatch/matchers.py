"""Matchers over an alert's fields and labels, as silences and inhibit rules write them.

``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex``, after Alertmanager: a
regex is anchored at both ends (``account=~bitso-.*`` matches ``bitso-treasury``, not
``old-bitso-x``), and a name the alert does not have reads as the empty string. So
``asset=`` matches the account-scope alerts (no asset), and a matcher on ``account`` sees
``""`` for an alert of a whole portfolio group. The names are the alert's fields
(:data:`FIELDS`) and its labels; a field wins over a label of the same name.

A value may be written in double quotes (JSON string rules) to keep spaces at its ends or
begin it with a quote: ``comment="a b "``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

FIELDS: Final = ("rule", "account", "exchange", "venue", "asset", "severity", "instance")
Op = Literal["=", "!=", "=~", "!~"]
# Longest operator first: `=~` is not `=` followed by a value starting with `~`.
_OPS: Final[tuple[Op, ...]] = ("=~", "!~", "!=", "=")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_VALUE: Final = 1000  # a regex this long is a mistake, or an attempt on the CPU
EXAMPLE: Final = "name=value, name!=value, name=~regex or name!~regex, like account=~bitso-.*"


class MatcherError(ValueError):
    """A matcher that cannot be used; ``offset`` is where in the text it went wrong."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op value``; build it with :func:`parse_matcher`."""

    name: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether the alert with these fields (:func:`alert_fields`) is matched."""
        got = fields.get(self.name, "")
        if self._regex is None:
            return (got == self.value) == (self.op == "=")
        return (self._regex.fullmatch(got) is not None) == (self.op == "=~")

    def __str__(self) -> str:
        """The text :func:`parse_matcher` reads back into this matcher."""
        plain = self.value == self.value.strip() and not self.value.startswith('"')
        value = self.value if plain else json.dumps(self.value, ensure_ascii=False)
        return f"{self.name}{self.op}{value}"


def parse_matcher(text: str) -> Matcher:
    """The matcher ``text`` spells; :class:`MatcherError` says what is wrong and where."""
    if not isinstance(text, str):
        raise MatcherError(f"expected a matcher as text ({EXAMPLE})")
    start = len(text) - len(text.lstrip())
    name_match = _NAME.match(text, start)
    if name_match is None:
        raise MatcherError(f"expected a field or label name first: {EXAMPLE}", start)
    at = name_match.end()
    while at < len(text) and text[at] == " ":
        at += 1
    op = next((op for op in _OPS if text.startswith(op, at)), None)
    if op is None:
        raise MatcherError(f"expected =, !=, =~ or !~ after {name_match.group()!r}", at)
    at += len(op)
    value_at = at + len(text[at:]) - len(text[at:].lstrip())
    value = text[at:].strip()
    if value.startswith('"'):
        try:
            decoded = json.loads(value)
        except ValueError:
            raise MatcherError("a quoted value must be one JSON string", value_at) from None
        if not isinstance(decoded, str):
            raise MatcherError("a quoted value must be one JSON string", value_at)
        value = decoded
    if len(value) > MAX_VALUE:
        raise MatcherError(f"a value may be at most {MAX_VALUE} characters", value_at)
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            offset = value_at + (exc.pos or 0)
            raise MatcherError(f"invalid regular expression: {exc.msg}", offset) from None
    return Matcher(name_match.group(), op, value, regex)


def matches_all(matchers: Iterable[Matcher], fields: Mapping[str, str]) -> bool:
    return all(matcher.matches(fields) for matcher in matchers)


def alert_fields(
    *,
    rule: str,
    account: str | None,
    exchange: str | None,
    venue: str | None,
    asset: str | None,
    severity: str,
    instance: str,
    labels: Mapping[str, str],
) -> dict[str, str]:
    """What matchers read of one alert: its labels, then its fields (absent: ``""``)."""
    fields = {
        "rule": rule,
        "account": account,
        "exchange": exchange,
        "venue": venue,
        "asset": asset,
        "severity": severity,
        "instance": instance,
    }
    return {**labels, **{name: value or "" for name, value in fields.items()}}
