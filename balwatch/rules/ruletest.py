"""Rule unit tests (``balwatch test``), in the spirit of ``promtool test rules``.

A rule that only fires at 3 a.m. must be proven before then: a test file feeds balance
series through the real :class:`~balwatch.rules.engine.Engine` on a fake clock (so a day of
polls runs in milliseconds) and states which alerts are firing at given times::

    rule_files: [../low-available.rules.yaml]     # globs, relative to this file
    accounts: {bitso-treasury: bitso}             # account -> exchange; default "test"
    interval: 1m                                  # time between samples; default 1m
    input_series:
      - account: bitso-treasury
        asset: USDT                               # venue: defaults to the exchange
        series:
          available: "6000 5500 4900x3 _ 7000"    # one sample per interval, from t=0
          total:     "10000x7"
    alert_tests:
      - at: 4m
        expected_alerts:                          # exactly the alerts firing at 4m
          - {rule: low-available, account: bitso-treasury, asset: USDT, severity: critical}

Samples: a decimal number; ``_`` for no sample; ``fail`` for a failed poll of the account;
any of them followed by ``xN`` repeats it N times. At sample index k (time k * interval) each
account with data is polled: its rows are the series entries with a number at k, and a
metric that is ``_`` while others of its row have numbers is missing (``None``) in that row.
An account whose series are all ``_`` at k is not polled at all (a gap: ``age`` grows),
and ``fail`` in any of its series makes the whole poll fail (the others must be ``fail`` or
``_`` there). The engine ticks once a second in between, as the daemon does, after the
polls of each step and at each ``at``: account-scope rules (``age``) fire when they would in
production. Steps continue past the end of the series (without polls) up to the last ``at``.

An input series may name ``accounts: [a, b, c]`` instead of one ``account``: the same
series then feeds each of them (a portfolio of wallets in a few lines).

``expected_alerts`` lists the alerts *firing* at ``at`` (pending ones are not firing). An
alert matches on ``rule``, ``account``, ``asset`` (omit them where the alert has none:
account-scope rules have no asset, a group's alert has only what its ``group_by`` names),
``venue`` if given, and ``group`` (the ``group_by`` keys and values, compared whole) if
given; ``severity``, ``labels`` (compared whole), ``summary``, ``description`` and
``values`` (each name given, compared as a number; a group's rows are named like
``USDT@bitso-hot``) are compared when given. ``expected_resolved``, when given, lists exactly
the alerts that resolved after the previous test's ``at`` (in time order) and up to this
one, compared the same way: that is where a resolved notification's text is checked::

      - at: 9m
        expected_alerts: []
        expected_resolved:
          - {rule: low-available, account: bitso-treasury, asset: USDT,
             summary: "bitso-treasury USDT: only 4900 available"}
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, PlainValidator, ValidationError, WithJsonSchema, model_validator

from balwatch.alert import Alert, Severity, group_text
from balwatch.config.model import DAY, DurationRange, Name
from balwatch.config.problems import Scalars, field_error, file_kind
from balwatch.config.yamlsource import YamlDocument, load_yaml
from balwatch.durations import format_duration
from balwatch.errors import ConfigError, Problem
from balwatch.model import Balance, Metric
from balwatch.money import decimal_text
from balwatch.rules.engine import TICK_SECONDS, Engine
from balwatch.rules.load import (
    ListedIn,
    StrictModel,
    load_rule_set,
    validation_problems,
)
from balwatch.rules.rule import Rule

DEFAULT_EXCHANGE: Final = "test"
FAIL: Final = "fail"
# Bounds what `1x99999999` can allocate; a week of 10 s samples fits.
MAX_SAMPLES: Final = 100_000
# Bounds how long a file runs (100,000 to 250,000 steps a second): a step is a sample time,
# or an engine tick each simulated second when a rule reads `age` or `failures`. Eleven
# days of ticks fit; `interval: 100ms` up to `at: 300d` does not.
MAX_STEPS: Final = 1_000_000
# A sample every poll interval at most, once a day at least.
Interval = Annotated[float, DurationRange(0.1, DAY)]
At = Annotated[float, DurationRange(0.0, 366 * DAY)]
# Float step times (k * interval) may miss an `at` by rounding: compare with slack.
_EPSILON: Final = 1e-6

Sample = Decimal | Literal["fail"] | None
_SAMPLE_RE: Final = re.compile(r"(_|fail|-?[0-9]+(?:\.[0-9]+)?)(?:x([0-9]+))?")


def parse_series(text: str) -> tuple[Sample, ...]:
    """Samples of a series string; raises a validation error with the offset of the token."""
    samples: list[Sample] = []
    for token in re.finditer(r"\S+", text):
        match = _SAMPLE_RE.fullmatch(token.group())
        if match is None:
            raise field_error(
                f"invalid sample {token.group()!r}; expected a number like 5000 or -1.5, "
                "'_' (no sample) or 'fail' (failed poll), optionally repeated like 5000x10",
                token.start(),
            )
        word, times = match.group(1), int(match.group(2) or 1)
        if times < 1:
            raise field_error("a repeat count must be at least 1, like 5000x3", token.start())
        if len(samples) + times > MAX_SAMPLES:
            raise field_error(f"a series may have at most {MAX_SAMPLES} samples", token.start())
        sample: Sample = None if word == "_" else FAIL if word == FAIL else Decimal(word)
        samples += [sample] * times
    if not samples:
        raise field_error('empty series; expected samples like "6000 5500 _ fail"')
    return tuple(samples)


def _series(value: object) -> tuple[Sample, ...]:
    if isinstance(value, float):
        # YAML made a float of it: digits past the 17th are gone before we see them.
        raise field_error('quote a fractional sample to keep every digit, like "1.5"; got {input}')
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a single whole-number sample that YAML read as a number
    if not isinstance(value, str):
        raise field_error('expected samples as text like "6000 5500 _ fail", got {input}')
    return parse_series(value)


SeriesText = Annotated[
    tuple[Sample, ...],
    PlainValidator(_series),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*((_|fail|-?[0-9]+(\.[0-9]+)?)(x[0-9]+)?\s*)+$",
            "description": "one sample per interval: number, _ (none) or fail; NxK repeats",
        }
    ),
]


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise field_error('expected a number as text like "4210.55", got {input}')
    try:
        return Decimal(str(value))
    except ArithmeticError:
        raise field_error('expected a number like "4210.55", got {input}') from None


AmountText = Annotated[
    Decimal, PlainValidator(_amount), WithJsonSchema({"type": ["string", "integer"]})
]


class ExpectedAlert(StrictModel, title="expected alert"):
    rule: str
    account: str | None = Field(None, description="omit for a group without account")
    venue: str | None = None
    asset: str | None = Field(None, description="omit for account-scope rules")
    group: dict[str, str | None] | None = Field(
        None, description="a group's group_by keys and values, compared whole when given"
    )
    severity: Severity | None = None
    labels: dict[str, str] | None = Field(None, description="compared whole when given")
    summary: str | None = None
    description: str | None = None
    values: dict[str, AmountText] | None = Field(
        None, description="the named values, compared as numbers"
    )


class AlertTest(StrictModel, title="alert test"):
    at: At = Field(description="time since the first sample, like 5m")
    expected_alerts: tuple[ExpectedAlert, ...] = Field((), description="exactly what fires")
    expected_resolved: tuple[ExpectedAlert, ...] | None = Field(
        None, description="exactly what resolved since the previous at; omitted: not checked"
    )


class InputSeries(StrictModel, title="input series"):
    account: Name | None = Field(None, description="one account, or list them in accounts")
    accounts: tuple[Name, ...] = Field((), description="the same series for each of them")
    asset: str
    venue: str | None = Field(None, description="default: the account's exchange")
    series: dict[Metric, SeriesText]

    @model_validator(mode="after")
    def _one_way(self) -> InputSeries:
        if (self.account is None) == (not self.accounts):
            raise field_error("give either account (one account) or accounts (a list of them)")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return self.accounts if self.account is None else (self.account,)


class RuleTestFile(StrictModel, title="rule test file"):
    rule_files: tuple[str, ...] = Field(description="globs, relative to this file")
    accounts: dict[str, str] = Field(
        default_factory=dict, description=f"account -> exchange; default {DEFAULT_EXCHANGE}"
    )
    interval: Interval = Field(60.0, description="time between samples")
    input_series: tuple[InputSeries, ...] = ()
    alert_tests: tuple[AlertTest, ...]


RULE_TEST_FILE: Final = file_kind("rule test file", RuleTestFile)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One ``alert_tests`` entry: what was missing, unexpected or different at ``at``."""

    at: float
    line: int
    column: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    different: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.different)


@dataclass(frozen=True, slots=True)
class FileResult:
    """A test file's checks, or the problems that kept it from running (then no checks)."""

    file: str
    problems: tuple[Problem, ...] = ()
    checks: tuple[CheckResult, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors and all(check.ok for check in self.checks)

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")


def run_file(path: Path) -> FileResult:
    """Load and run one test file."""
    try:
        doc = load_yaml(path, RULE_TEST_FILE)
    except ConfigError as exc:
        return FileResult(str(path), tuple(exc.problems))
    try:
        test = RuleTestFile.model_validate(doc.data)
    except ValidationError as exc:
        problems = validation_problems(doc, exc, RuleTestFile, Scalars(doc))
        return FileResult(doc.file, tuple(sorted(problems, key=lambda p: (p.line, p.column))))
    try:
        rule_set = load_rule_set(
            test.rule_files,
            path.parent,
            listed_in=ListedIn(doc, ("rule_files",)),
            unmatched="error",
        )
    except ConfigError as exc:
        return FileResult(doc.file, tuple(exc.problems))
    problems = [*rule_set.warnings, *_consistency(doc, test, rule_set.rules)]
    if any(p.severity == "error" for p in problems):
        return FileResult(doc.file, tuple(problems))
    return FileResult(doc.file, tuple(problems), _Run(doc, test, rule_set.rules).checks())


def run_tests(paths: Sequence[Path]) -> int:
    """Run every file, print results and a summary line; the exit code (0 ok, 1 not)."""
    passed = failed = broken = 0
    for path in paths:
        result = run_file(path)
        for problem in result.problems:
            print(problem, file=sys.stderr)
        if result.errors:
            broken += 1
            print(f"ERROR {result.file}: could not run")
            continue
        bad = [check for check in result.checks if not check.ok]
        passed += len(result.checks) - len(bad)
        failed += len(bad)
        status = "FAIL " if bad else "ok   "
        print(
            f"{status}{result.file}: {plural(len(result.checks), 'alert test')}, {len(bad)} failed"
        )
        for check in bad:
            print(_report(result.file, check))
    summary = f"{passed} passed, {failed} failed"
    if broken:
        summary += f", {plural(broken, 'file')} with errors"
    print(summary)
    return 0 if not (failed or broken) else 1


def plural(count: int, noun: str) -> str:
    """``1 rule``, ``2 rules``: for summary lines."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _report(file: str, check: CheckResult) -> str:
    lines = [f"  {file}:{check.line}:{check.column}: at {format_duration(check.at)}:"]
    lines += [f"    missing:    {alert}" for alert in check.missing]
    lines += [f"    unexpected: {alert}" for alert in check.unexpected]
    lines += [f"    different:  {alert}" for alert in check.different]
    return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def _consistency(doc: YamlDocument, test: RuleTestFile, rules: Sequence[Rule]) -> list[Problem]:
    """What the models cannot see alone: fail mixed with values, repeats, unknown rules."""
    problems: list[Problem] = []

    def problem(path: tuple[object, ...], message: str) -> None:
        line, column = doc.position(path)
        problems.append(Problem(doc.file, line, column, message, kind="inconsistent test"))

    seen: set[tuple[str, str, str]] = set()
    feeds = _feeds(test)
    for index, account, entry in feeds:
        key = (account, _venue(test, entry, account), entry.asset)
        if key in seen:
            problem(
                ("input_series", index),
                f"a second series for {account} {key[1]}/{entry.asset}; "
                "put all its metrics in one 'series' mapping",
            )
        seen.add(key)
    for account in dict.fromkeys(account for _, account, _ in feeds):
        entries = [(i, e) for i, a, e in feeds if a == account]
        length = max((len(s) for _, e in entries for s in e.series.values()), default=0)
        for step in range(length):
            at_step = [
                (i, metric, series[step])
                for i, e in entries
                for metric, series in e.series.items()
                if step < len(series) and series[step] is not None
            ]
            if any(s == FAIL for *_, s in at_step) and any(s != FAIL for *_, s in at_step):
                i, metric, _ = next(x for x in at_step if x[2] != FAIL)
                problem(
                    ("input_series", i, "series", metric),
                    f"sample {step + 1} of {account} is 'fail' in one series but a value in "
                    "this one; a failed poll has no values: write '_' or 'fail' here",
                )
    steps = _steps(test, rules)
    if steps > MAX_STEPS:
        last = max(range(len(test.alert_tests)), key=lambda i: test.alert_tests[i].at)
        problem(
            ("alert_tests", last, "at"),
            f"this test would take {steps:,} steps (a sample every "
            f"{format_duration(test.interval)} up to {format_duration(test.alert_tests[last].at)}"
            f"{', and a tick every second' if _ticks(rules) else ''}), more than "
            f"the {MAX_STEPS:,} allowed; use a longer interval or an earlier 'at'",
        )
    names = {rule.name for rule in rules}
    for i, check in enumerate(test.alert_tests):
        for listing, listed in (
            ("expected_alerts", check.expected_alerts),
            ("expected_resolved", check.expected_resolved or ()),
        ):
            for j, expected in enumerate(listed):
                if expected.rule not in names:
                    problem(
                        ("alert_tests", i, listing, j, "rule"),
                        f"no rule named {expected.rule!r} in rule_files",
                    )
    return problems


def _steps(test: RuleTestFile, rules: Sequence[Rule]) -> int:
    """Sample times up to the last ``at``, plus a tick per second for rules that ticks evaluate."""
    last = max((check.at for check in test.alert_tests), default=0.0)
    steps = int(last / test.interval) + 1 + len(test.alert_tests)
    if _ticks(rules):
        steps += int(last / TICK_SECONDS)
    return steps


def _ticks(rules: Sequence[Rule]) -> bool:
    """Whether the daemon's ticker evaluates some of ``rules`` between polls: account-scope
    rules (``age``) and grouped rules (a pending group fires on time)."""
    return any(rule.account_scope or rule.grouped for rule in rules)


def _exchange(test: RuleTestFile, account: str) -> str:
    return test.accounts.get(account, DEFAULT_EXCHANGE)


def _venue(test: RuleTestFile, entry: InputSeries, account: str) -> str:
    return entry.venue or _exchange(test, account)


def _feeds(test: RuleTestFile) -> list[tuple[int, str, InputSeries]]:
    """(index in input_series, account, entry): one per account an entry feeds."""
    return [(i, a, entry) for i, entry in enumerate(test.input_series) for a in entry.names]


class _Clock:
    """The engine's clock: seconds since the first sample, moved by the runner only."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Run:
    """One pass over simulated time; ``firing`` mirrors what consumers of alerts would see."""

    def __init__(self, doc: YamlDocument, test: RuleTestFile, rules: Sequence[Rule]) -> None:
        self.doc = doc
        self.test = test
        self.clock = _Clock()
        self.engine = Engine(rules, clock=self.clock)
        self.firing: dict[str, Alert] = {}
        self.resolved: list[Alert] = []  # since the last check
        self.feeds = _feeds(test)
        accounts = [*test.accounts, *(account for _, account, _ in self.feeds)]
        self.accounts = {name: _exchange(test, name) for name in accounts}
        for name, exchange in self.accounts.items():
            self.engine.register_account(name, exchange)
        self.ticking = _ticks(rules)
        self.ticked = 0.0  # when the ticker last ran

    def checks(self) -> tuple[CheckResult, ...]:
        order = sorted(range(len(self.test.alert_tests)), key=lambda i: self.test.alert_tests[i].at)
        interval = self.test.interval
        results: dict[int, CheckResult] = {}
        step = 0
        for index in order:
            at = self.test.alert_tests[index].at
            while step * interval <= at + _EPSILON:
                self._tick_until(step * interval)
                self._step(step, step * interval)
                step += 1
            self._tick_until(at)
            self.clock.now = at
            self._apply(self.engine.tick())
            results[index] = self._compare(index)
        return tuple(results[i] for i in range(len(self.test.alert_tests)))

    def _tick_until(self, until: float) -> None:
        """The daemon's ticker between samples: account-scope rules (``age``) and groups are
        evaluated every second, so they fire when they would in production, not at the next
        sample."""
        if not self.ticking:
            return
        t = self.ticked + TICK_SECONDS
        while t < until - _EPSILON:
            self.clock.now = t
            self._apply(self.engine.tick())
            t += TICK_SECONDS
        self.ticked = max(self.ticked, until)

    def _step(self, step: int, now: float) -> None:
        self.clock.now = now
        for account, exchange in self.accounts.items():
            rows: list[Balance] = []
            failed = False
            for _, name, entry in self.feeds:
                if name != account:
                    continue
                values = {m: s[step] for m, s in entry.series.items() if step < len(s)}
                failed = failed or FAIL in values.values()
                # Any: the keys are metric names (validated), which mypy cannot see in **.
                metrics: dict[str, Any] = {
                    m: v for m, v in values.items() if isinstance(v, Decimal)
                }
                if metrics:
                    venue = _venue(self.test, entry, account)
                    rows.append(
                        Balance(account, exchange, venue, entry.asset, entry.asset, **metrics)
                    )
            if failed:
                self._apply(self.engine.poll_failed(account, exchange))
            elif rows:
                self._apply(self.engine.observe(account, exchange, rows))
        self._apply(self.engine.tick())

    def _apply(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if alert.event == "resolved":
                self.firing.pop(alert.fingerprint, None)
                self.resolved.append(alert)
            else:
                self.firing[alert.fingerprint] = alert

    def _compare(self, index: int) -> CheckResult:
        check = self.test.alert_tests[index]
        missing, unexpected, different = _matched(check.expected_alerts, self.firing.values())
        if check.expected_resolved is not None:
            gone = _matched(check.expected_resolved, self.resolved)
            missing += [f"resolved {text}" for text in gone[0]]
            unexpected += [f"resolved {text}" for text in gone[1]]
            different += [f"resolved {text}" for text in gone[2]]
        self.resolved = []
        line, column = self.doc.position(("alert_tests", index))
        return CheckResult(
            at=check.at,
            line=line,
            column=column,
            missing=tuple(missing),
            unexpected=tuple(unexpected),
            different=tuple(different),
        )


def _matched(
    expected: Sequence[ExpectedAlert], alerts: Iterable[Alert]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, different) between what a test expects and ``alerts``."""
    actual = list(alerts)
    missing: list[str] = []
    different: list[str] = []
    for wanted in expected:
        match = next((a for a in actual if _same_alert(wanted, a)), None)
        if match is None:
            missing.append(_describe_expected(wanted))
            continue
        actual.remove(match)
        different += _differences(wanted, match)
    return missing, [_describe(alert, full=True) for alert in actual], different


def _same_alert(expected: ExpectedAlert, alert: Alert) -> bool:
    if expected.group is not None:  # the group says it all; the rest only when given
        return (
            expected.rule == alert.rule
            and alert.group is not None
            and dict(alert.group) == expected.group
            and all(
                getattr(expected, key) in (None, getattr(alert, key))
                for key in ("account", "venue", "asset")
            )
        )
    return (
        expected.rule == alert.rule
        and expected.account == alert.account
        and expected.asset == alert.asset
        and (expected.venue is None or expected.venue == alert.venue)
    )


def _differences(expected: ExpectedAlert, alert: Alert) -> list[str]:
    wanted: dict[str, object] = {
        "severity": expected.severity,
        "labels": expected.labels,
        "summary": expected.summary,
        "description": expected.description,
    }
    got: dict[str, object] = {
        "severity": alert.severity,
        "labels": dict(alert.labels),
        "summary": alert.summary,
        "description": alert.description,
    }
    if expected.values is not None:
        wanted["values"] = {k: decimal_text(v) for k, v in expected.values.items()}
        got["values"] = {
            k: None if alert.values.get(k) is None else decimal_text(alert.values[k])
            for k in expected.values
        }
        if all(alert.values.get(k) == v for k, v in expected.values.items()):
            got["values"] = wanted["values"]  # equal as numbers, whatever the spelling
    return [
        f"{_describe(alert)}: {key}\n      expected: {value!r}\n      got:      {got[key]!r}"
        for key, value in wanted.items()
        if value is not None and value != got[key]
    ]


def _describe(alert: Alert, *, full: bool = False) -> str:
    if alert.group is not None:
        where = group_text(alert.group)
    elif alert.asset is None:
        where = str(alert.account)
    else:
        where = f"{alert.account} {alert.venue}/{alert.asset}"
    text = f"{alert.rule} {where}"
    if full:
        text += f" (severity {alert.severity}, summary {alert.summary!r})"
    return text


def _describe_expected(expected: ExpectedAlert) -> str:
    if expected.group is not None:
        return f"{expected.rule} {group_text(expected.group)}"
    venue = f"{expected.venue}/" if expected.venue else ""
    asset = None if expected.asset is None else f"{venue}{expected.asset}"
    return " ".join(part for part in (expected.rule, expected.account, asset) if part)
