"""Rule files (docs/rules.md) in, compiled :class:`~balwatch.rules.rule.Rule` values out.

Ops edit these files by hand, so every mistake must come back as ``FILE:LINE:COL`` with
what was expected, and all of them at once: a broken rule fails its whole file (a file is
never half loaded, so a reload cannot silently drop one rule), but the other files are still
read and checked, and :class:`~balwatch.errors.ConfigError` carries every problem found.

The models forbid unknown keys, so a typo (``whn:``) is an error and not a rule that never
fires. Expressions and templates are compiled during validation; their errors carry the
offset inside the text, which is added to where the YAML scalar starts, so the column points
at the offending character of ``when``, not at the start of the line.

Warnings (:class:`~balwatch.errors.Problem` with severity ``warning``) do not stop loading:
a glob that matches no file, a rule that selects none of the configured accounts, and a
rule that reads a metric none of the sources it selects ever reports (``pending_withdrawal``
on CoinW): such a rule is "no data" forever and would stay silent when it matters.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails

from balwatch.alert import Severity
from balwatch.config.model import DAY, DurationRange, Name, unknown_interval
from balwatch.config.problems import Reporter, Scalars, field_error, file_kind, value_at
from balwatch.config.yamlsource import (
    Position,
    YamlDocument,
    YamlPath,
    load_yaml,
    out_of_descriptors,
)
from balwatch.errors import ConfigError, Problem
from balwatch.rules.expr import ExprError, Expression, parse_expression
from balwatch.rules.rule import Rule, RuleError
from balwatch.rules.select import Exclude, Selector
from balwatch.rules.template import Template, TemplateError

# Accounts named in a warning before "and N more": a message is one line of a terminal.
_NAMED: Final = 3
# The longest wait or re-notify interval a rule may set. History windows in expressions
# have the same bound (balwatch.rules.expr.MAX_WINDOW).
MAX_RULE_DURATION: Final = 30 * DAY
# `for: 0s` is allowed, unlike a zero `repeat`: a rule needs it to fire at once when its
# file's defaults set a `for`.
WaitDuration = Annotated[float, DurationRange(0.0, MAX_RULE_DURATION)]
# Re-notifying more often than the engine ticks (each second) cannot happen.
RepeatDuration = Annotated[float, DurationRange(1.0, MAX_RULE_DURATION)]


def _text(value: object, what: str, example: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if value is None or isinstance(value, str):
        raise field_error(f"expected {what} like {example}, got an empty value")
    raise field_error(f"expected {what} like {example} as text, got {{input}}")


def _expression(value: object) -> Expression:
    source = _text(value, "an expression", "'available < 5000'")
    try:
        return parse_expression(source)
    except ExprError as exc:
        raise field_error(exc.message, exc.offset) from None


def _template(value: object) -> Template:
    if not isinstance(value, str):
        raise field_error("expected text, got {input}; quote it")
    try:
        return Template(value)
    except TemplateError as exc:
        raise field_error(exc.message, exc.offset) from None


ExpressionText = Annotated[
    Expression,
    PlainValidator(_expression),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
TemplateText = Annotated[Template, PlainValidator(_template), WithJsonSchema({"type": "string"})]


@dataclass(frozen=True, slots=True)
class _Context:
    """What validation needs from outside the rule file; ``None``: not checked."""

    sink_names: Collection[str] | None = None
    interval_names: Collection[str] | None = None


def _known_sink(value: str, info: ValidationInfo) -> str:
    context = info.context
    sinks = context.sink_names if isinstance(context, _Context) else None
    if sinks is None or value in sinks:
        return value
    close = difflib.get_close_matches(value, list(sinks), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(sorted(sinks)) or "none"
    raise field_error(f"unknown sink {{input}} in notify{hint}; configured sinks: {known}")


SinkName = Annotated[str, AfterValidator(_known_sink)]


def _known_interval(value: str, info: ValidationInfo) -> str:
    context = info.context
    known = context.interval_names if isinstance(context, _Context) else None
    if known is None or value in known:
        return value
    raise field_error(unknown_interval(known))


IntervalName = Annotated[str, AfterValidator(_known_interval)]
_MUTE_DURING: Final = "names of time_intervals in the config: no sink is notified inside any"
_ACTIVE_DURING: Final = "names of time_intervals in the config: no sink is notified outside all"
Globs = tuple[str, ...]


# --------------------------------------------------------------------------- models


class StrictModel(BaseModel):
    """Unknown keys are errors. Subclasses set a ``title``: it names the mapping in messages
    ("unknown key 'whn' in rule") and in editors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ExcludeModel(StrictModel, title="exclude"):
    accounts: Globs = ()
    exchanges: Globs = ()
    venues: Globs = ()
    assets: Globs = ()


class SelectModel(StrictModel, title="select"):
    """Globs; an omitted list selects everything. ``exclude`` drops rows matching any glob."""

    accounts: Globs = Field((), description="account names or globs, like bitso-*")
    exchanges: Globs = Field((), description="coinapi, bitso, kunacore, coinw")
    venues: Globs = Field((), description="venue inside a multi-venue source (CoinAPI)")
    assets: Globs = Field((), description="upper-case asset codes or globs")
    exclude: ExcludeModel = ExcludeModel()

    def selector(self) -> Selector:
        ex = self.exclude
        return Selector(
            accounts=self.accounts,
            exchanges=self.exchanges,
            venues=self.venues,
            assets=self.assets,
            exclude=Exclude(ex.accounts, ex.exchanges, ex.venues, ex.assets),
        )


class RuleDefaults(StrictModel, title="defaults"):
    severity: Severity = "warning"
    for_: WaitDuration = Field(0.0, alias="for", description="how long 'when' must hold")
    notify: tuple[SinkName, ...] | None = Field(None, description="sink names; omitted: all")
    labels: dict[str, str] = Field(default_factory=dict)
    repeat: RepeatDuration | None = Field(None, description="re-notify while firing")
    mute_during: tuple[IntervalName, ...] = Field((), description=_MUTE_DURING)
    active_during: tuple[IntervalName, ...] = Field((), description=_ACTIVE_DURING)


class RuleModel(StrictModel, title="rule"):
    name: Name
    description: TemplateText | None = None
    select: SelectModel = SelectModel()
    group_by: tuple[str, ...] | None = Field(
        None,
        description="a portfolio rule: account, exchange, venue, asset or account labels; "
        "[] is one group of everything selected",
    )
    when: ExpressionText = Field(description="the alert condition, like 'available < 5000'")
    clear: ExpressionText | None = Field(None, description="resolve only when this holds")
    for_: WaitDuration | None = Field(None, alias="for", description="default: defaults.for")
    repeat: RepeatDuration | None = None
    severity: Severity | None = None
    summary: TemplateText | None = Field(None, description="like '{account} {asset}: {total}'")
    resolved_summary: TemplateText | None = Field(
        None, description="summary of the resolve; default: the summary it fired with"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    notify: tuple[SinkName, ...] | None = None
    mute_during: tuple[IntervalName, ...] | None = Field(
        None, description=_MUTE_DURING + "; default: defaults.mute_during"
    )
    active_during: tuple[IntervalName, ...] | None = Field(
        None, description=_ACTIVE_DURING + "; default: defaults.active_during"
    )

    def compile(self, defaults: RuleDefaults, file: str, line: int) -> Rule:
        """The Rule, with the file's defaults filled in; raises :class:`RuleError`."""
        return Rule(
            name=self.name,
            when=self.when,
            clear=self.clear,
            description="" if self.description is None else self.description.text,
            description_template=self.description,
            selector=self.select.selector(),
            for_=defaults.for_ if self.for_ is None else self.for_,
            repeat=defaults.repeat if self.repeat is None else self.repeat,
            severity=self.severity or defaults.severity,
            summary=self.summary,
            resolved_summary=self.resolved_summary,
            labels={**defaults.labels, **self.labels},
            notify=defaults.notify if self.notify is None else self.notify,
            group_by=self.group_by,
            mute_during=defaults.mute_during if self.mute_during is None else self.mute_during,
            active_during=(
                defaults.active_during if self.active_during is None else self.active_during
            ),
            file=file,
            line=line,
        )


class RuleFile(StrictModel, title="rule file"):
    defaults: RuleDefaults = RuleDefaults()
    rules: tuple[RuleModel, ...]


RULE_FILE: Final = file_kind("rule file", RuleFile)


# --------------------------------------------------------------------------- messages


# What a pydantic error type expected, in the words of the file's author.
_EXPECTED: Final = {
    "string_type": "text",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "tuple_type": "a list like [a, b]",
}


class _Reporter(Reporter):
    """Rule files and rule-test files: titled models, one message for a misspelt key."""

    expected = _EXPECTED

    def skip(self, error: ErrorDetails, errors: list[ErrorDetails], path: YamlPath) -> bool:
        """A missing key that an unknown key beside it misspells: one mistake, one message."""
        if error["type"] != "missing":
            return False
        parent, key = error["loc"][:-1], str(error["loc"][-1])
        return any(
            other["type"] == "extra_forbidden"
            and other["loc"][:-1] == parent
            and difflib.get_close_matches(str(other["loc"][-1]), [key], n=1)
            for other in errors
        )


def validation_problems(
    doc: YamlDocument, exc: ValidationError, model: type[BaseModel], scalars: Scalars
) -> list[Problem]:
    """Every error of validating ``doc.data`` against ``model``, positioned in the file.

    Shared by the rule loader and the rule-test loader: both validate a hand-written YAML
    file whose models carry a ``title`` that names each mapping in messages.
    """
    return _Reporter(doc, model, scalars=scalars).problems(exc)


# --------------------------------------------------------------------------- loading


class RuleSet(NamedTuple):
    rules: tuple[Rule, ...]
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]  # every file read, including those without rules


@dataclass(frozen=True, slots=True)
class ListedIn:
    """Where the globs were written (``rules:`` of a config), for unmatched-glob warnings."""

    doc: YamlDocument
    path: YamlPath


def load_rules(
    patterns: Iterable[str],
    base_dir: Path | None = None,
    sink_names: Collection[str] | None = None,
) -> tuple[Rule, ...]:
    """The rules of every file matching ``patterns``; raises ConfigError with all errors."""
    return load_rule_set(patterns, base_dir, sink_names=sink_names).rules


def load_rule_set(
    patterns: Iterable[str],
    base_dir: Path | None = None,
    *,
    sink_names: Collection[str] | None = None,
    interval_names: Collection[str] | None = None,
    accounts: Mapping[str, str] | None = None,
    reported_metrics: Mapping[str, Collection[str]] | None = None,
    listed_in: ListedIn | None = None,
    unmatched: Literal["warning", "error"] = "warning",
) -> RuleSet:
    """Load, compile and check rule files; warnings are returned, errors raised.

    ``patterns`` are globs (``**`` allowed), relative to ``base_dir`` (default: the working
    directory). ``sink_names``: the configured sinks that ``notify`` may name (``None``:
    not checked); ``interval_names``: the time intervals that ``mute_during`` and
    ``active_during`` may name (``None``: not checked). ``accounts``: configured account
    name -> exchange, for the selection warnings (``None``: not checked).
    ``reported_metrics``: exchange -> the metrics its source reports, for the
    never-reported-metric warnings (an exchange not in it may report anything). A file
    matched by several globs loads once; the file ``listed_in`` itself is never a rule
    file. Raises :class:`ConfigError` with every error, plus the warnings, when any file
    has an error.
    """
    files, problems = _expand(list(patterns), base_dir, listed_in, unmatched)
    loader = _Loader(
        _Context(
            None if sink_names is None else frozenset(sink_names),
            None if interval_names is None else frozenset(interval_names),
        ),
        accounts,
        reported_metrics or {},
    )
    rules: list[Rule] = []
    for file in files:
        file_rules, file_problems = loader.load(file)
        problems += file_problems
        if not any(p.severity == "error" for p in file_problems):
            rules += file_rules
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return RuleSet(tuple(rules), tuple(problems), tuple(files))


def _expand(
    patterns: list[str],
    base_dir: Path | None,
    listed_in: ListedIn | None,
    unmatched: Literal["warning", "error"],
) -> tuple[list[str], list[Problem]]:
    """Files in glob order (each glob sorted), without repeats, and unmatched-glob problems."""
    own = Path(listed_in.doc.file).resolve() if listed_in else None
    seen: set[Path] = set()
    files: list[str] = []
    problems: list[Problem] = []
    for index, pattern in enumerate(patterns):
        matched = False
        for match in matching_paths(pattern, base_dir):
            resolved = Path(match).resolve()
            if resolved == own or not resolved.is_file():
                continue
            matched = True
            if resolved not in seen:
                seen.add(resolved)
                files.append(_display(match))
        if not matched:
            problems.append(_unmatched(pattern, base_dir, index, listed_in, unmatched))
    return files, problems


def matching_paths(pattern: str, base_dir: Path | None = None) -> list[str]:
    """What one rule-file glob matches, sorted: what the loader reads and a reload watches.

    Raises OSError when the process is out of file descriptors: glob skips a directory it
    cannot list without a word, and a rule set loaded from fewer files than there are would
    replace the running one.
    """
    found = sorted(glob.glob(_joined(pattern, base_dir), recursive=True))
    _check_descriptors()
    return found


def _check_descriptors() -> None:
    """Raise the OSError of opening a file if no descriptor is left (see matching_paths)."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if out_of_descriptors(exc):
            raise


def _joined(pattern: str, base_dir: Path | None) -> str:
    return os.path.join(base_dir, pattern) if base_dir else pattern


def _display(path: str) -> str:
    """``path`` relative to the working directory when below it: shorter messages."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return path


def _unmatched(
    pattern: str,
    base_dir: Path | None,
    index: int,
    listed_in: ListedIn | None,
    severity: Literal["warning", "error"],
) -> Problem:
    if listed_in is None:
        file, (line, column) = _display(_joined(pattern, base_dir)), Position(1, 1)
    else:
        path = (*listed_in.path, index)
        written = value_at(listed_in.doc.data, path)
        pattern = written if isinstance(written, str) else pattern
        file, (line, column) = listed_in.doc.file, listed_in.doc.position(path)
    return Problem(
        file, line, column, f"no rule file matches {pattern!r}", severity, kind="no matching file"
    )


class _Loader:
    """Loads files one by one, remembering rule names: duplicates across files are errors."""

    def __init__(
        self,
        context: _Context,
        accounts: Mapping[str, str] | None,
        reported_metrics: Mapping[str, Collection[str]],
    ) -> None:
        self.context = context
        self.accounts = accounts
        self.reported_metrics = reported_metrics
        self.first: dict[str, tuple[str, int]] = {}  # rule name -> where it was defined

    def load(self, file: str) -> tuple[list[Rule], list[Problem]]:
        try:
            doc = load_yaml(file, RULE_FILE)
        except ConfigError as exc:
            return [], exc.problems
        scalars = Scalars(doc)
        problems = self._duplicates(doc)
        try:
            parsed = RuleFile.model_validate(doc.data, context=self.context)
            defaults, models = parsed.defaults, list(enumerate(parsed.rules))
        except ValidationError as exc:
            problems += validation_problems(doc, exc, RuleFile, scalars)
            defaults, models = self._valid_parts(doc.data, exc)
        rules: list[Rule] = []
        for index, model in models:
            path = ("rules", index)
            try:
                rule = model.compile(defaults, doc.file, doc.position(path).line)
            except RuleError as exc:
                where = (*path, exc.key)
                text = value_at(doc.data, where)
                if exc.offset is not None and isinstance(text, str):
                    line, column = scalars.at(where, text, exc.offset)
                else:
                    line, column = doc.position(where, key=True)
                problems.append(Problem(doc.file, line, column, exc.message, kind="invalid rule"))
                continue
            rules.append(rule)
            if self.accounts is not None:
                problems += _warnings(
                    rule, self.accounts, self.reported_metrics, doc, scalars, path
                )
        return rules, sorted(problems, key=lambda p: (p.line, p.column))

    def _valid_parts(
        self, data: Any, exc: ValidationError
    ) -> tuple[RuleDefaults, list[tuple[int, RuleModel]]]:
        """The rules that validated on their own, so their later checks run too.

        The file is rejected either way; this only finds more of its problems in one run.
        Nothing is salvaged when the errors are outside single rules (say, in defaults).
        """
        broken: set[int] = set()
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            if len(loc) < 2 or loc[0] != "rules" or not isinstance(loc[1], int):
                return RuleDefaults(), []
            broken.add(loc[1])
        defaults = RuleDefaults.model_validate(data.get("defaults") or {}, context=self.context)
        return defaults, [
            (index, RuleModel.model_validate(item, context=self.context))
            for index, item in enumerate(data["rules"])
            if index not in broken
        ]

    def _duplicates(self, doc: YamlDocument) -> list[Problem]:
        """Checked on the raw data, so a duplicate is found even in a file that is invalid."""
        items = doc.data.get("rules") if isinstance(doc.data, dict) else None
        problems = []
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            line, column = doc.position(("rules", index, "name"))
            first = self.first.setdefault(name, (doc.file, line))
            if first != (doc.file, line):
                where = f"line {first[1]}" if first[0] == doc.file else f"{first[0]}:{first[1]}"
                problems.append(
                    Problem(
                        doc.file,
                        line,
                        column,
                        f"duplicate rule name {name!r} (first defined at {where}); "
                        "rule names must be unique across all rule files",
                        kind="duplicate name",
                    )
                )
        return problems


# --------------------------------------------------------------------------- warnings


def _warnings(
    rule: Rule,
    accounts: Mapping[str, str],
    reported_metrics: Mapping[str, Collection[str]],
    doc: YamlDocument,
    scalars: Scalars,
    path: YamlPath,
) -> list[Problem]:
    """Selection and never-reported-metric warnings for one compiled rule."""
    # Most rules name their accounts: look those up instead of testing every account.
    literal = rule.selector.literal_accounts
    candidates = accounts.keys() if literal is None else sorted(literal & accounts.keys())
    selected = {
        name: accounts[name]
        for name in candidates
        if rule.selector.matches_account(name, accounts[name])
    }
    if not selected:
        if not accounts:
            return []
        line, column = doc.position((*path, "select"))
        message = f"rule {rule.name!r} selects none of the configured accounts"
        return [Problem(doc.file, line, column, message, "warning", kind="selects nothing")]
    if any(exchange not in reported_metrics for exchange in selected.values()):
        return []  # not a known source: it might report anything
    problems: list[Problem] = []
    warned: set[str] = set()
    for key, expr in (("when", rule.when), ("clear", rule.clear)):
        if expr is None:
            continue
        for metric in sorted(expr.metrics - warned):
            # A row rule has no data on the rows lacking the metric; a group with any such
            # row has none at all, so for a grouped rule one source lacking it is enough.
            lacking = {n: x for n, x in selected.items() if metric not in reported_metrics[x]}
            if not lacking or (rule.group_by is None and len(lacking) < len(selected)):
                continue
            warned.add(metric)
            exchanges = sorted(set(lacking.values()))
            names = sorted(lacking)
            if len(names) > _NAMED:
                names[_NAMED:] = [f"{len(names) - _NAMED} more"]
            if rule.group_by is not None:
                what = (
                    f"whose rows rule {rule.name!r} groups (accounts: {', '.join(names)}): "
                    "a group with one of those rows never has data"
                )
            else:
                what = (
                    f"the only source{'s' if len(exchanges) > 1 else ''} rule {rule.name!r} "
                    f"selects (accounts: {', '.join(names)}): the rule never has data"
                )
            message = f"{metric} is never reported by {' or '.join(exchanges)}, {what}"
            line, column = scalars.at((*path, key), expr.source, _metric_offset(expr, metric))
            problems.append(
                Problem(doc.file, line, column, message, "warning", kind="metric never reported")
            )
    return problems


def _metric_offset(expr: Expression, metric: str) -> int:
    """Where ``metric`` is read in the source: its name, else the ``usd(`` that reads it."""
    for pattern in (rf"\b{metric}\b", r"\busd\s*\("):
        match = re.search(pattern, expr.source)
        if match:
            return match.start()
    return 0
