"""Rule files: the product's example, defaults, whole-file rejection, positions, warnings,
and a corpus of broken files, each with the exact FILE:LINE:COL it must be reported at."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from balwatch.adapters import REPORTED_METRICS
from balwatch.config import load_yaml
from balwatch.errors import ConfigError, Problem
from balwatch.rules.load import ListedIn, load_rule_set, load_rules
from balwatch.rules.select import Selector

CORPUS = Path(__file__).parent / "corpus"
SINKS = ("ops-mqtt", "ops-slack", "ops-chat")
CORPUS_SINKS = ("ops-mqtt", "ops-chat")
ACCOUNTS = {
    "bitso-treasury": "bitso",
    "coinw-spot": "coinw",
    "kuna-custody": "kunacore",
    "coinapi-ems": "coinapi",
}

# The product's example rule file, verbatim.
DESIGN_EXAMPLE = """
defaults:                # optional, per file
  severity: warning
  for: 1m
  notify: [ops-mqtt, ops-slack]

rules:
  - name: low-available
    description: Hot wallet running low
    select: {accounts: ["bitso-*"], assets: [USDT, MXN]}   # globs; omitted = all
    when: available < 5000
    clear: available >= 6000       # optional hysteresis: resolve only when this holds
    for: 2m                        # condition must hold this long before firing
    repeat: 4h                     # re-notify while still firing; omitted = never
    severity: critical             # info | warning | critical
    summary: "{account} {asset}: only {available} available"
    labels: {team: treasury}

  - name: large-pending-withdrawal
    when: pending_withdrawal > 0.25 * total

  - name: aml-lock
    when: aml_locked > 0
    severity: critical

  - name: sudden-drop
    when: pct_change(total, 15m) <= -20

  - name: account-stale
    when: age > 5m                 # account scope: seconds since the last good poll
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[Problem]:
    return [p for p in exc.value.problems if p.severity == "error"]


# --------------------------------------------------------------------------- valid files


def test_design_example_loads_with_defaults_applied(tmp_path: Path) -> None:
    write(tmp_path / "design.yaml", DESIGN_EXAMPLE)

    rules = load_rules(["*.yaml"], tmp_path, sink_names=SINKS)

    by_name = {rule.name: rule for rule in rules}
    assert list(by_name) == [
        "low-available",
        "large-pending-withdrawal",
        "aml-lock",
        "sudden-drop",
        "account-stale",
    ]
    low = by_name["low-available"]
    assert low.when.source == "available < 5000"
    assert low.clear is not None and low.clear.source == "available >= 6000"
    assert (low.for_, low.repeat, low.severity) == (120.0, 14400.0, "critical")
    assert low.selector == Selector(accounts=["bitso-*"], assets=["USDT", "MXN"])
    assert low.summary is not None and low.summary.text == (
        "{account} {asset}: only {available} available"
    )
    assert low.description == "Hot wallet running low"
    assert dict(low.labels) == {"team": "treasury"}
    assert low.notify == ("ops-mqtt", "ops-slack")
    assert (low.file, low.line) == (str(tmp_path / "design.yaml"), 7)
    pending = by_name["large-pending-withdrawal"]
    assert (pending.for_, pending.repeat, pending.severity) == (60.0, None, "warning")
    assert pending.selector == Selector()
    assert by_name["aml-lock"].severity == "critical"
    assert by_name["sudden-drop"].windows == 900.0
    assert by_name["account-stale"].account_scope


def test_rule_settings_override_file_defaults(tmp_path: Path) -> None:
    write(
        tmp_path / "a.rules.yaml",
        """
        defaults:
          for: 5m
          repeat: 1h
          notify: [ops-mqtt]
          labels: {team: ops, tier: "1"}
        rules:
          - name: at-once
            when: aml_locked > 0
            for: 0s
            repeat: 10m
            notify: []
            labels: {team: compliance}
          - name: inherits
            when: locked > total
        """,
    )

    at_once, inherits = load_rules(["a.rules.yaml"], tmp_path, sink_names=SINKS)

    assert (at_once.for_, at_once.repeat, at_once.notify) == (0.0, 600.0, ())
    assert dict(at_once.labels) == {"team": "compliance", "tier": "1"}
    assert (inherits.for_, inherits.repeat, inherits.notify) == (300.0, 3600.0, ("ops-mqtt",))
    assert dict(inherits.labels) == {"team": "ops", "tier": "1"}


def test_description_with_fields_is_a_template(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        """
        rules:
          - name: r
            when: available < 5
            description: "{account} has {available}; {{braces}} stay"
        """,
    )

    (rule,) = load_rules(["a.yaml"], tmp_path)

    assert rule.description_template is not None
    rendered = rule.description_template.render({"account": "a", "available": 3})
    assert rendered == "a has 3; {braces} stay"


def test_notify_is_not_checked_without_sink_names(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "rules:\n  - {name: r, when: total < 1, notify: [anything]}\n")

    (rule,) = load_rules(["a.yaml"], tmp_path)

    assert rule.notify == ("anything",)


def test_files_load_in_glob_order_once_each(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", "rules:\n  - {name: b, when: total < 1}\n")
    write(tmp_path / "a.yaml", "rules:\n  - {name: a, when: total < 1}\n")
    write(tmp_path / "sub" / "c.yaml", "rules:\n  - {name: c, when: total < 1}\n")

    rule_set = load_rule_set(["*.yaml", "b.yaml", "**/*.yaml"], tmp_path)

    assert [rule.name for rule in rule_set.rules] == ["a", "b", "c"]
    assert len(rule_set.files) == 3
    assert rule_set.warnings == ()


# --------------------------------------------------------------------------- errors


def test_one_broken_rule_rejects_its_file_and_other_files_are_still_checked(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "a.yaml",
        """
        rules:
          - name: fine
            when: total < 1
          - name: broken
            when: totl < 1
        """,
    )
    write(tmp_path / "b.yaml", "rules:\n  - {name: also-broken, when: total <}\n")
    write(tmp_path / "c.yaml", "rules:\n  - {name: good, when: total < 1}\n")

    with pytest.raises(ConfigError) as exc:
        load_rules(["*.yaml"], tmp_path)

    assert [(Path(p.file).name, p.line, p.column) for p in errors_of(exc)] == [
        ("a.yaml", 5, 11),
        ("b.yaml", 2, 38),
    ]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        """
        rules:
          - name: typo
            when: available < 5000
            severity: hgih
          - name: stale
            when: age > 5m
            clear: available > 0
          - name: expr
            when: available <> 5
        """,
    )

    with pytest.raises(ConfigError) as exc:
        load_rules(["a.yaml"], tmp_path)

    found = [(p.line, p.column, p.message.split(";")[0]) for p in errors_of(exc)]
    assert [where[:2] for where in found] == [(4, 15), (7, 5), (9, 22)]
    assert "clear" in found[1][2]


def test_duplicate_names_across_files_point_at_the_second_and_name_the_first(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", "rules:\n  - name: low\n    when: total < 1\n")
    write(tmp_path / "b.yaml", "rules:\n  - name: other\n    when: total < 1\n  - name: low\n")

    with pytest.raises(ConfigError) as exc:
        load_rules(["*.yaml"], tmp_path)

    problems = {(Path(p.file).name, p.line, p.column): p.message for p in errors_of(exc)}
    duplicate = problems[("b.yaml", 4, 11)]
    assert f"first defined at {tmp_path / 'a.yaml'}:2" in duplicate
    assert ("b.yaml", 4, 5) in problems  # and its missing `when`, in the same run


def test_unknown_sink_names_the_configured_ones(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml", "rules:\n  - {name: r, when: total < 1, notify: [ops-mqtt, opschat]}\n"
    )

    with pytest.raises(ConfigError) as exc:
        load_rules(["a.yaml"], tmp_path, sink_names=SINKS)

    (problem,) = errors_of(exc)
    assert (problem.line, problem.column) == (2, 51)
    assert "unknown sink 'opschat' in notify (did you mean 'ops-chat'?)" in problem.message
    assert "configured sinks: ops-chat, ops-mqtt, ops-slack" in problem.message


def test_unmatched_glob_is_a_warning_pointing_into_the_listing_file(tmp_path: Path) -> None:
    config = write(tmp_path / "balwatch.yaml", 'rules:\n  - "*.rules.yaml"\n  - "missing/*.yaml"\n')
    write(tmp_path / "a.rules.yaml", "rules: []\n")

    rule_set = load_rule_set(
        ["*.rules.yaml", "missing/*.yaml"],
        tmp_path,
        listed_in=ListedIn(load_yaml(config), ("rules",)),
    )

    assert rule_set.warnings == (
        Problem(str(config), 3, 5, "no rule file matches 'missing/*.yaml'", "warning"),
    )


def test_unmatched_glob_can_be_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_rule_set(["nothing-*.yaml"], tmp_path, unmatched="error")

    (problem,) = errors_of(exc)
    assert problem.message == "no rule file matches 'nothing-*.yaml'"


def test_the_listing_file_is_never_loaded_as_rules(tmp_path: Path) -> None:
    config = write(tmp_path / "balwatch.yaml", "rules: ['*.yaml']\naccounts: []\n")
    write(tmp_path / "r.yaml", "rules:\n  - {name: r, when: total < 1}\n")

    rule_set = load_rule_set(
        ["*.yaml"], tmp_path, listed_in=ListedIn(load_yaml(config), ("rules",))
    )

    assert [rule.name for rule in rule_set.rules] == ["r"]


# --------------------------------------------------------------------------- positions


@pytest.mark.parametrize(
    ("when", "line", "column"),
    [
        # plain scalar: exact
        ("when: available < 5000 and lockd > 0", 3, 32),
        # double-quoted: past the quote
        ('when: "available < 5000 and lockd > 0"', 3, 33),
        # double-quoted with an escape before the error: approximate, a few columns early
        # (lockd is at column 34; the escape is two characters in the file, a tab in the text)
        (r'when: "available <\t5000 and lockd > 0"', 3, 31),
        # literal block: on the line and column where the name is written
        ("when: |\n      available < 5000\n        and lockd > 0", 5, 13),
        # folded plain scalar over two lines
        ("when: available < 5000\n      and lockd > 0", 4, 11),
        # an error at the end of the text points just after its last character
        ("when: available <   ", 3, 22),
    ],
)
def test_expression_errors_point_inside_the_scalar(
    tmp_path: Path, when: str, line: int, column: int
) -> None:
    write(tmp_path / "a.yaml", f"rules:\n  - name: r\n    {when}\n")

    with pytest.raises(ConfigError) as exc:
        load_rules(["a.yaml"], tmp_path)

    (problem,) = errors_of(exc)
    assert (problem.line, problem.column) == (line, column), problem


# --------------------------------------------------------------------------- warnings


def test_metric_that_no_selected_source_reports_is_a_warning_at_its_name(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "a.yaml",
        """
        rules:
          - name: coinw-pending
            select: {exchanges: [coinw]}
            when: total > 0 and pending_withdrawal > 0.25 * total
          - name: usd-on-bitso
            select: {accounts: [bitso-*]}
            when: usd(available) < 1000
          - name: mixed-sources-fine
            select: {exchanges: [bitso, coinw]}
            when: pending_withdrawal > 0
          - name: account-scope-fine
            select: {exchanges: [coinw]}
            when: failures > 3
          - name: selects-nobody
            select: {accounts: [bitso-treasury], exchanges: [coinw]}
            when: total < 1
        """,
    )

    rule_set = load_rule_set(
        ["a.yaml"], tmp_path, accounts=ACCOUNTS, reported_metrics=REPORTED_METRICS
    )

    assert [(p.line, p.column, p.severity) for p in rule_set.warnings] == [
        (4, 25, "warning"),
        (7, 11, "warning"),
        (15, 13, "warning"),
    ]
    pending, usd, nobody = (p.message for p in rule_set.warnings)
    assert pending.startswith("pending_withdrawal is never reported by coinw")
    assert "accounts: coinw-spot" in pending
    assert usd.startswith("rate_usd is never reported by bitso")
    assert nobody == "rule 'selects-nobody' selects none of the configured accounts"
    assert len(rule_set.rules) == 5  # warnings never drop a rule


def test_a_grouped_rule_warns_of_one_source_lacking_a_metric_its_groups_need(
    tmp_path: Path,
) -> None:
    """A row without the metric makes its whole group no data: one such source is enough
    for a warning, which prices (every row gets a rate_usd) take away."""
    write(
        tmp_path / "a.yaml",
        """
        rules:
          - name: exposure
            select: {exchanges: [bitso, coinapi]}
            group_by: [venue]
            when: sum(usd(total)) > 2000000
          - name: floor
            group_by: [asset]
            when: sum(available) < 50000
        """,
    )

    def warnings(reported: Mapping[str, frozenset[str]]) -> list[str]:
        rule_set = load_rule_set(["a.yaml"], tmp_path, accounts=ACCOUNTS, reported_metrics=reported)
        return [f"{p.line}:{p.column}: {p.message}" for p in rule_set.warnings]

    assert warnings(REPORTED_METRICS) == [
        "5:15: rate_usd is never reported by bitso, whose rows rule 'exposure' groups "
        "(accounts: bitso-treasury): a group with one of those rows never has data"
    ]
    priced = {name: metrics | {"rate_usd"} for name, metrics in REPORTED_METRICS.items()}
    assert warnings(priced) == []


def test_unknown_exchanges_get_no_metric_warnings(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "rules:\n  - {name: r, when: pending_withdrawal > 0}\n")

    rule_set = load_rule_set(
        ["a.yaml"], tmp_path, accounts={"acct": "test"}, reported_metrics=REPORTED_METRICS
    )

    assert rule_set.warnings == ()


def test_warnings_ride_along_when_there_are_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "rules:\n  - {name: r, when: total <}\n")

    with pytest.raises(ConfigError) as exc:
        load_rule_set(["a.yaml", "none.yaml"], tmp_path)

    assert [p.severity for p in exc.value.problems] == ["warning", "error"]


# --------------------------------------------------------------------------- corpus

EXPECT = re.compile(r"# expect: (\d+):(\d+) (.+)")
CASES = sorted(CORPUS.iterdir())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.stem)
def test_broken_rule_file_is_reported_at_the_right_place(case: Path) -> None:
    """A case is one file, or a directory of files loaded together (cross-file errors);
    each expected error is a ``# expect: LINE:COL message fragment`` line in its file."""
    files = sorted(case.glob("*.yaml")) if case.is_dir() else [case]
    expected = [
        (file.resolve(), int(match[1]), int(match[2]), match[3].strip())
        for file in files
        for match in EXPECT.finditer(file.read_text())
    ]
    assert expected, f"{case}: no '# expect: LINE:COL message' comment"

    with pytest.raises(ConfigError) as exc:
        pattern = str(case / "*.yaml") if case.is_dir() else str(case)
        load_rule_set([pattern], sink_names=CORPUS_SINKS)

    found = errors_of(exc)
    assert len(found) == len(expected), "\n".join(map(str, found))
    for problem, (file, line, column, fragment) in zip(found, expected, strict=True):
        where = (Path(problem.file).resolve(), problem.line, problem.column)
        assert where == (file, line, column), str(problem)
        assert fragment in problem.message, str(problem)
