"""The compiled, validated rule that the rule-file loader produces and the engine runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from balwatch.alert import SEVERITIES, Severity
from balwatch.rules.expr import Aggregate, Expression
from balwatch.rules.select import Selector
from balwatch.rules.template import GROUP_FIELDS, ROW_FIELDS, Template

GROUP_KEYS: Final = ("account", "exchange", "venue", "asset")
"""What ``group_by`` may name besides account labels (a label of the same name is hidden)."""
_ALWAYS_FIELDS: Final = frozenset({"rule", "severity", "values", *GROUP_FIELDS})


class RuleError(ValueError):
    """A rule whose parts do not fit together; ``key`` names the rule-file key at fault and
    ``offset``, when set, the character inside its text."""

    def __init__(self, message: str, key: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.offset = offset


@dataclass(frozen=True, kw_only=True, eq=False)
class Rule:
    """One rule. Construction checks what the parts cannot check alone (:class:`RuleError`).

    ``for_`` and ``repeat`` are seconds. ``notify`` ``None`` means every sink. The alert's
    description is ``description_template`` rendered, else the plain ``description``.
    ``resolved_summary``, when set, is the summary of the resolved notification instead of
    the one the alert fired with.
    ``group_by`` (``None``: a rule of single rows) makes a portfolio rule: its expressions
    read the rows of each group through aggregates (:mod:`balwatch.rules.groups`); ``()`` is
    one group of everything selected.
    Equality is identity: two loads of the same file are different rules; the engine
    compares :attr:`condition` to decide whether alert state survives a reload.
    """

    name: str
    when: Expression
    description: str = ""
    selector: Selector = field(default_factory=Selector)
    clear: Expression | None = None
    for_: float = 0.0
    repeat: float | None = None
    severity: Severity = "warning"
    summary: Template | None = None
    resolved_summary: Template | None = None
    description_template: Template | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    notify: tuple[str, ...] | None = None
    group_by: tuple[str, ...] | None = None
    # Names of the config's time intervals: the rule's alerts notify no sink inside any of
    # mute_during, nor outside all of active_during (when it names any).
    mute_during: tuple[str, ...] = ()
    active_during: tuple[str, ...] = ()
    file: str = ""
    line: int = 0
    # Derived in __post_init__.
    account_scope: bool = field(init=False)
    history_metrics: frozenset[str] = field(init=False)
    windows: float = field(init=False)
    aggregates: tuple[Aggregate, ...] = field(init=False)
    """The aggregates of ``when`` and ``clear``, each text once."""
    group_windows: frozenset[str] = field(init=False)
    """Aggregates whose per-group history a window function reads."""

    def __post_init__(self) -> None:
        if not self.name:
            raise RuleError("a rule needs a name", "name")
        if not (math.isfinite(self.for_) and self.for_ >= 0):
            raise RuleError(f"'for' must be a duration >= 0, got {self.for_!r}", "for")
        if self.repeat is not None and not (math.isfinite(self.repeat) and self.repeat > 0):
            raise RuleError(f"'repeat' must be a duration > 0, got {self.repeat!r}", "repeat")
        if self.severity not in SEVERITIES:
            raise RuleError(
                f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}",
                "severity",
            )
        self._check_grouping()
        scope = self.when.account_scope
        if self.clear is not None and scope and not self.clear.account_scope:
            raise RuleError(
                "'when' uses only age/failures (an account-scope rule, evaluated once per "
                "account), so 'clear' cannot read balance metrics",
                "clear",
            )
        if scope:
            for key, template in (
                ("summary", self.summary),
                ("resolved_summary", self.resolved_summary),
                ("description", self.description_template),
            ):
                used = sorted(ROW_FIELDS & template.fields) if template else []
                if used:
                    raise RuleError(
                        f"{key} uses {{{used[0]}}}, but this rule is account-scope (its "
                        "condition uses only age/failures): it has no venue, asset or metrics",
                        key,
                    )
        exprs = (self.when,) if self.clear is None else (self.when, self.clear)
        object.__setattr__(self, "account_scope", scope)
        object.__setattr__(
            self, "history_metrics", frozenset().union(*(e.history_metrics for e in exprs))
        )
        object.__setattr__(self, "windows", max(e.windows for e in exprs))
        aggregates = {a.text: a for e in exprs for a in e.aggregates}
        object.__setattr__(self, "aggregates", tuple(aggregates.values()))
        object.__setattr__(
            self, "group_windows", frozenset().union(*(e.group_windows for e in exprs))
        )

    def _check_grouping(self) -> None:
        """Aggregates only with ``group_by``; with it, rows only through aggregates."""
        exprs = [("when", self.when), ("clear", self.clear)]
        templates = [
            ("summary", self.summary),
            ("resolved_summary", self.resolved_summary),
            ("description", self.description_template),
        ]
        if self.group_by is None:
            for key, expr in exprs:
                if expr is not None and expr.aggregate_offset is not None:
                    func = expr.source[expr.aggregate_offset :].split("(", 1)[0].strip()
                    raise RuleError(
                        f"{func}() is an aggregate over a group of rows, but this rule has no "
                        "group_by; "
                        "add one, like group_by: [asset] (or [] for one group of every row "
                        "it selects)",
                        key,
                        expr.aggregate_offset,
                    )
            for key, template in templates:
                used = sorted(GROUP_FIELDS & template.fields) if template else []
                if used:
                    raise RuleError(
                        f"{key} uses {{{used[0]}}}, which only rules with group_by have", key
                    )
            return
        seen: set[str] = set()
        for name in self.group_by:
            if not name:
                raise RuleError("group_by names must not be empty", "group_by")
            if name in seen:
                raise RuleError(f"group_by lists {name!r} twice", "group_by")
            seen.add(name)
        for key, expr in exprs:
            if expr is not None and expr.row_read is not None:
                offset, name = expr.row_read
                hint = (
                    f"like sum({name}) or min({name})"
                    if name not in ("age", "failures")
                    else "like sum(available); age and failures belong to single accounts"
                )
                raise RuleError(
                    f"{name} is read outside an aggregate, but this rule has group_by: it "
                    f"sees each group of rows through aggregates, {hint}",
                    key,
                    offset,
                )
        allowed = _ALWAYS_FIELDS | (seen & set(GROUP_KEYS))
        if "account" in seen:
            allowed |= {"exchange"}  # an account is on one exchange
        for key, template in templates:
            for name in sorted(template.fields - allowed) if template else []:
                why = (
                    f"{name} is not in group_by"
                    if name in GROUP_KEYS
                    else "a group has no single row or account"
                )
                raise RuleError(
                    f"{key} uses {{{name}}}, but this rule has group_by and {why}; "
                    "use {group}, {values} or {members}",
                    key,
                )

    @property
    def grouped(self) -> bool:
        return self.group_by is not None

    @property
    def condition(self) -> tuple[str, str, str | None]:
        """(name, when, clear) sources: alert state survives a reload while this is equal."""
        return (self.name, self.when.source, None if self.clear is None else self.clear.source)
