"""Rule selectors (``select:``) and the index that finds the rules a row must be tested against.

A :class:`Selector` has glob lists for ``accounts``, ``exchanges``, ``venues`` and
``assets``; an empty list (or ``None``) selects everything on that key. A row is selected
when every non-empty list has a matching glob, and no glob of ``exclude`` matches: the
exclude lists are an *any* match, so ``exclude: {accounts: [test-*], assets: [DUST]}``
drops every test account and every DUST row. Globs are :func:`fnmatch.fnmatchcase`
(``*``, ``?``, ``[seq]``), case-sensitive: asset codes are upper-case, account names are
exactly as configured.

Account-scope rules (``age``/``failures`` only) are about an account, not a row, so only
``accounts`` and ``exchanges`` (and their excludes) apply to them; ``venues``/``assets`` are
ignored there.

:class:`RuleIndex` makes "which rules apply to this row" cheap. Rows are stable between
polls, so the answer is cached per row key and a full cycle costs one dict lookup per row
plus the rules that actually match. A cache miss is cheap too: rules whose ``accounts`` are
all literal names are indexed by name, so only rules with wildcard (or no) account globs are
tested against every new account. The caches grow with the distinct row keys seen, which the
configured accounts bound; an index is rebuilt, not updated, when the rules change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from balwatch.rules.rule import Rule

_WILDCARDS = frozenset("*?[")


def is_literal(glob: str) -> bool:
    """True when ``glob`` matches only itself."""
    return not _WILDCARDS.intersection(glob)


class _Globs:
    """One glob list compiled: a set for literal names, one regex for the wildcard ones."""

    __slots__ = ("_literals", "_regex")

    def __init__(self, globs: Sequence[str]) -> None:
        self._literals = frozenset(g for g in globs if is_literal(g))
        wild = [translate(g) for g in globs if not is_literal(g)]
        self._regex = re.compile("|".join(wild)) if wild else None

    def __call__(self, value: str) -> bool:
        if value in self._literals:
            return True
        return self._regex is not None and self._regex.match(value) is not None


_KEYS = ("accounts", "exchanges", "venues", "assets")


def _tuple(globs: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(globs, str):  # tuple("BTC") would be three one-letter globs
        raise TypeError(f"expected a list of globs, got the string {globs!r}")
    return () if globs is None else tuple(globs)


@dataclass(frozen=True, slots=True)
class Exclude:
    """Globs that take a row out of a selector when any one of them matches."""

    accounts: Sequence[str] | None = ()
    exchanges: Sequence[str] | None = ()
    venues: Sequence[str] | None = ()
    assets: Sequence[str] | None = ()

    def __post_init__(self) -> None:
        for name in _KEYS:
            object.__setattr__(self, name, _tuple(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class Selector:
    """Which rows (or, for account-scope rules, which accounts) a rule applies to."""

    accounts: Sequence[str] | None = ()
    exchanges: Sequence[str] | None = ()
    venues: Sequence[str] | None = ()
    assets: Sequence[str] | None = ()
    exclude: Exclude = field(default_factory=Exclude)
    # Compiled matchers; None = the list is empty (no constraint).
    _match: tuple[_Globs | None, ...] = field(init=False, repr=False, compare=False)
    _unmatch: tuple[_Globs | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        include = [_tuple(getattr(self, name)) for name in _KEYS]
        for name, globs in zip(_KEYS, include, strict=True):
            object.__setattr__(self, name, globs)
        exclude = [getattr(self.exclude, name) for name in _KEYS]
        object.__setattr__(self, "_match", tuple(_Globs(g) if g else None for g in include))
        object.__setattr__(self, "_unmatch", tuple(_Globs(g) if g else None for g in exclude))

    @property
    def literal_accounts(self) -> frozenset[str] | None:
        """The account names this selector can match, when they are all literal; else None."""
        accounts = _tuple(self.accounts)
        if accounts and all(is_literal(g) for g in accounts):
            return frozenset(accounts)
        return None

    def matches_account(self, account: str, exchange: str) -> bool:
        """The ``accounts``/``exchanges`` part (all an account-scope rule looks at)."""
        return _test(self._match[0], self._unmatch[0], account) and _test(
            self._match[1], self._unmatch[1], exchange
        )

    def matches_position(self, venue: str, asset: str) -> bool:
        """The ``venues``/``assets`` part."""
        return _test(self._match[2], self._unmatch[2], venue) and _test(
            self._match[3], self._unmatch[3], asset
        )

    def matches_part(self, key: str, value: str) -> bool:
        """One part alone (``accounts``, ``exchanges``, ``venues`` or ``assets``): whether
        rows with this value there can be selected at all."""
        index = _KEYS.index(key)
        return _test(self._match[index], self._unmatch[index], value)

    def matches(self, account: str, exchange: str, venue: str, asset: str) -> bool:
        return self.matches_account(account, exchange) and self.matches_position(venue, asset)


def _test(include: _Globs | None, exclude: _Globs | None, value: str) -> bool:
    if include is not None and not include(value):
        return False
    return exclude is None or not exclude(value)


class RowMatch(NamedTuple):
    """The rules for one row key, and the metrics whose history they read (to record)."""

    rules: tuple[Rule, ...]
    history_metrics: tuple[str, ...]


RowKey = tuple[str, str, str, str]
"""(account, exchange, venue, asset)"""
_AccountRules = tuple[tuple["Rule", ...], tuple["Rule", ...]]
"""(row rules, account-scope rules) whose accounts/exchanges part selects one account"""


class RuleIndex:
    """Rules by selector, with per-account and per-row caches (module docstring)."""

    __slots__ = (
        "_account_cache",
        "_by_account",
        "_position",
        "_row_cache",
        "_wild",
        "rules",
    )

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._position = {id(rule): i for i, rule in enumerate(self.rules)}
        self._by_account: dict[str, list[Rule]] = {}
        self._wild: list[Rule] = []
        for rule in self.rules:
            names = rule.selector.literal_accounts
            if names is None:
                self._wild.append(rule)
            else:
                for name in names:
                    self._by_account.setdefault(name, []).append(rule)
        self._account_cache: dict[tuple[str, str], _AccountRules] = {}
        self._row_cache: dict[RowKey, RowMatch] = {}

    def _for_account(self, account: str, exchange: str) -> _AccountRules:
        key = (account, exchange)
        cached = self._account_cache.get(key)
        if cached is None:
            candidates = [*self._by_account.get(account, ()), *self._wild]
            candidates.sort(key=lambda rule: self._position[id(rule)])
            # Grouped rules see rows through their groups (balwatch.rules.groups), not here.
            chosen = [
                r
                for r in candidates
                if r.group_by is None and r.selector.matches_account(account, exchange)
            ]
            cached = (
                tuple(r for r in chosen if not r.account_scope),
                tuple(r for r in chosen if r.account_scope),
            )
            self._account_cache[key] = cached
        return cached

    def row(self, account: str, exchange: str, venue: str, asset: str) -> RowMatch:
        """Row-scope rules selecting this row, in rule order; cached per row key."""
        key = (account, exchange, venue, asset)
        match = self._row_cache.get(key)
        if match is None:
            row_rules = self._for_account(account, exchange)[0]
            rules = tuple(r for r in row_rules if r.selector.matches_position(venue, asset))
            metrics: dict[str, None] = {}
            for rule in rules:
                metrics.update(dict.fromkeys(sorted(rule.history_metrics)))
            match = self._row_cache[key] = RowMatch(rules, tuple(metrics))
        return match

    def account(self, account: str, exchange: str) -> tuple[Rule, ...]:
        """Account-scope rules selecting this account, in rule order; cached."""
        return self._for_account(account, exchange)[1]
