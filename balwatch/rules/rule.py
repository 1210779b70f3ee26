"""The compiled, validated rule that the rule-file loader produces and the engine runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from balwatch.alert import SEVERITIES, Severity
from balwatch.rules.expr import Expression
from balwatch.rules.select import Selector
from balwatch.rules.template import ROW_FIELDS, Template


class RuleError(ValueError):
    """A rule whose parts do not fit together; ``key`` names the rule-file key at fault."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True, kw_only=True, eq=False)
class Rule:
    """One rule. Construction checks what the parts cannot check alone (:class:`RuleError`).

    ``for_`` and ``repeat`` are seconds. ``notify`` ``None`` means every sink. The alert's
    description is ``description_template`` rendered, else the plain ``description``.
    ``resolved_summary``, when set, is the summary of the resolved notification instead of
    the one the alert fired with.
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

    @property
    def condition(self) -> tuple[str, str, str | None]:
        """(name, when, clear) sources: alert state survives a reload while this is equal."""
        return (self.name, self.when.source, None if self.clear is None else self.clear.source)
