"""Rule unit tests: the series format, time stepping, and how failures and errors read."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic_core import PydanticCustomError

from balwatch.rules.ruletest import (
    FAIL,
    MAX_SAMPLES,
    CheckResult,
    FileResult,
    parse_series,
    run_file,
)

RULES = """
rules:
  - name: low
    when: available < 5000
    clear: available >= 6000
    for: 2m
    severity: critical
    summary: "{account} {asset}: {available}"
    labels: {team: treasury}
  - name: stale
    when: age > 3m
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run(tmp_path: Path, test: str, rules: str = RULES) -> FileResult:
    write(tmp_path / "rules" / "a.rules.yaml", rules)
    return run_file(write(tmp_path / "tests" / "a.test.yaml", test))


def summary(check: CheckResult) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return check.missing, check.unexpected, check.different


# --------------------------------------------------------------------------- series


def test_series_samples_and_repeats() -> None:
    assert parse_series(" 6000 -1.5\t_ fail 7x3 _x2 failx1 ") == (
        Decimal(6000),
        Decimal("-1.5"),
        None,
        FAIL,
        Decimal(7),
        Decimal(7),
        Decimal(7),
        None,
        None,
        FAIL,
    )


@pytest.mark.parametrize(
    ("text", "offset", "fragment"),
    [
        ("6000 5500 abc", 10, "invalid sample 'abc'"),
        ("6000 1e5", 5, "invalid sample '1e5'"),
        ("6000 5x0", 5, "at least 1"),
        (f"1 1x{MAX_SAMPLES}", 2, "at most"),
        ("   ", None, "empty series"),
    ],
)
def test_series_errors_carry_the_offset_of_the_token(
    text: str, offset: int | None, fragment: str
) -> None:
    with pytest.raises(PydanticCustomError) as exc:
        parse_series(text)

    assert fragment in exc.value.message()
    assert (exc.value.context or {}).get("offset") == offset


# --------------------------------------------------------------------------- passing


LOW_TEST = """
rule_files: [../rules/*.rules.yaml]
accounts: {bitso-treasury: bitso}
input_series:
  - account: bitso-treasury
    asset: USDT
    series:
      available: "7000 4900 4800 4700 5500 _ 6100"
alert_tests:
  - at: 2m
    expected_alerts: []
  - at: 3m
    expected_alerts:
      - rule: low
        account: bitso-treasury
        venue: bitso
        asset: USDT
        severity: critical
        labels: {team: treasury}
        summary: "bitso-treasury USDT: 4700"
  - at: 5m        # the missing sample is no data: still firing
    expected_alerts: [{rule: low, account: bitso-treasury, asset: USDT}]
  - at: 1m        # out of order: results still come back in file order
    expected_alerts: []
  - at: 6m
    expected_alerts: []
"""


def test_passing_file(tmp_path: Path) -> None:
    result = run(tmp_path, LOW_TEST)

    assert result.ok, result
    assert result.problems == ()
    assert [check.at for check in result.checks] == [120, 180, 300, 60, 360]
    assert all(check.ok for check in result.checks)


def test_failures_list_missing_unexpected_and_different_alerts(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {available: "4000x4"}
          - account: acct
            asset: BTC
            series: {available: "4000x4"}
        alert_tests:
          - at: 3m
            expected_alerts:
              - {rule: low, account: acct, asset: EUR}
              - {rule: low, account: acct, asset: USDT, severity: warning, summary: "x"}
        """,
    )

    assert not result.ok
    (check,) = result.checks
    assert (check.line, check.column) == (10, 5)
    assert check.missing == ("low acct EUR",)
    assert check.unexpected == ("low acct test/BTC (severity critical, summary 'acct BTC: 4000')",)
    assert check.different == (
        "low acct test/USDT: severity\n      expected: 'warning'\n      got:      'critical'",
        "low acct test/USDT: summary\n      expected: 'x'\n      got:      'acct USDT: 4000'",
    )


def test_expected_resolved_checks_what_resolved_since_the_previous_test(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {available: "4000x4 7000x3"}
        alert_tests:
          - at: 6m
            expected_resolved: [{rule: low, account: acct, asset: USDT}]
          - at: 3m
            expected_alerts: [{rule: low, account: acct, asset: USDT}]
            expected_resolved: []
          - at: 5m
            expected_resolved:
              - {rule: low, account: acct, asset: USDT, summary: "acct USDT: 7000"}
          - at: 330s
            expected_alerts: []
        """,
    )

    assert not result.problems, result.problems
    late, before, resolved, unchecked = result.checks
    assert before.ok and unchecked.ok
    # The resolve at 4m says what fired at 2m, not the value that resolved it.
    assert resolved.different == (
        "resolved low acct test/USDT: summary\n"
        "      expected: 'acct USDT: 7000'\n"
        "      got:      'acct USDT: 4000'",
    )
    assert summary(late) == (("resolved low acct USDT",), (), ())  # it resolved before 5m


def test_an_unexpected_resolve_is_reported(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - {account: acct, asset: USDT, series: {available: "4000x3 7000"}}
        alert_tests:
          - {at: 3m, expected_alerts: [], expected_resolved: []}
        """,
    )
    (check,) = result.checks
    assert check.unexpected == (
        "resolved low acct test/USDT (severity critical, summary 'acct USDT: 4000')",
    )


# --------------------------------------------------------------------------- time


def test_gaps_and_steps_after_the_series_make_an_account_stale(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        interval: 30s
        input_series:
          - account: acct
            asset: USDT
            series: {total: "1 _ 1"}
        alert_tests:
          - at: 210s    # last good poll at 1m: age 2m30s
            expected_alerts: []
          - at: 250s    # between steps: the engine ticks at 250s, age 3m10s
            expected_alerts: [{rule: stale, account: acct}]
          - at: 1h
            expected_alerts: [{rule: stale, account: acct}]
        """,
    )

    assert [summary(check) for check in result.checks] == [((), (), ())] * 3


def test_account_rules_fire_on_the_daemons_once_a_second_tick(tmp_path: Path) -> None:
    """Not at the next sample: a `for:` on `age` starts and ends when it would in production."""
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        interval: 5m
        input_series:
          - account: acct
            asset: USDT
            series: {total: "1"}
        alert_tests:
          - at: 240s    # stale since 181s, pending for 59s
            expected_alerts: []
          - at: 241s
            expected_alerts: [{rule: stale, account: acct, summary: "acct: 4m1s"}]
        """,
        rules="rules:\n  - {name: stale, when: age > 3m, for: 1m, summary: '{account}: {age}'}\n",
    )
    assert [summary(check) for check in result.checks] == [((), (), ())] * 2


def test_failed_polls_are_not_balances(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {available: "4000 fail fail fail 4000"}
        alert_tests:
          - at: 3m      # pending since 0m; failed polls neither fire nor resolve it
            expected_alerts: []
          - at: 4m      # a good poll after 4m of `when` holding: fires
            expected_alerts: [{rule: low, account: acct, asset: USDT}]
        """,
    )

    assert result.ok, result


def test_a_row_missing_from_a_poll_is_no_data(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {available: "4000 4000 4000 _ 7000"}
          - account: acct
            asset: BTC
            series: {available: "9000x5"}
        alert_tests:
          - at: 3m
            expected_alerts: [{rule: low, account: acct, asset: USDT}]
          - at: 4m
            expected_alerts: []
        """,
    )

    assert result.ok, result


# --------------------------------------------------------------------------- errors


def errors(result: FileResult) -> list[tuple[str, int, int, str]]:
    return [(Path(p.file).name, p.line, p.column, p.message) for p in result.errors]


def test_fail_mixed_with_a_value_is_an_error(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {available: "1 fail"}
          - account: acct
            asset: BTC
            series: {available: "1 2"}
        alert_tests: []
        """,
    )

    ((file, line, column, message),) = errors(result)
    assert (file, line, column) == ("a.test.yaml", 8, 25)
    assert message.startswith("sample 2 of acct is 'fail' in one series but a value in this")
    assert result.checks == ()


def test_unknown_rule_in_expected_alerts_is_an_error(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        alert_tests:
          - at: 1m
            expected_alerts: [{rule: lwo, account: acct}]
        """,
    )

    assert errors(result) == [("a.test.yaml", 4, 30, "no rule named 'lwo' in rule_files")]


def test_rule_files_that_match_nothing_are_an_error(tmp_path: Path) -> None:
    result = run(tmp_path, "rule_files: [../rules/a.rules.yaml, nope.yaml]\nalert_tests: []\n")

    assert errors(result) == [("a.test.yaml", 1, 37, "no rule file matches 'nope.yaml'")]


def test_problems_in_rule_files_are_reported_where_they_are(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "rule_files: [../rules/a.rules.yaml]\nalert_tests: []\n",
        rules="rules:\n  - name: low\n    when: avail < 5\n",
    )

    ((file, line, column, message),) = errors(result)
    assert (file, line, column) == ("a.rules.yaml", 3, 11)
    assert message.startswith("unknown name 'avail'")


def test_test_file_errors_are_positioned(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: USDT
            series: {avail: "1 2", total: "1 2 x3"}
        alert_tests:
          - {at: soon, expected_alerts: []}
        alerts_tests: []
        """,
    )

    assert [(line, column) for _, line, column, _ in errors(result)] == [
        (5, 14),
        (5, 40),
        (7, 10),
        (8, 1),
    ]
    messages = [message for *_, message in errors(result)]
    # The bad key is quoted, not the series under it.
    assert "expected 'total', 'available'" in messages[0] and messages[0].endswith("got 'avail'")
    assert "invalid sample 'x3'" in messages[1]
    assert "got 'soon'" in messages[2]
    assert (
        "unknown key 'alerts_tests' in rule test file (did you mean 'alert_tests'?)"
        in (messages[3])
    )


def test_an_unquoted_fractional_sample_is_refused_not_rounded(tmp_path: Path) -> None:
    """YAML reads 1.000000000000000001 as a float, 1.0: the rule would see another balance."""
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - account: acct
            asset: ETH
            series: {total: 1.000000000000000001}
        alert_tests:
          - at: 0s
            expected_alerts: [{rule: dust, account: acct, asset: ETH}]
        """,
        rules="rules:\n  - {name: dust, when: total > 1}\n",
    )
    [(_, line, column, message)] = errors(result)
    assert (line, column) == (5, 21)
    assert message.startswith('quote a fractional sample to keep every digit, like "1.5"')


# --------------------------------------------------------------------------- groups

GROUP_RULES = """
rules:
  - name: floor
    group_by: [asset]
    when: sum(available) < 10000
    for: 2m
    summary: "{asset}: {values}"
"""


def test_one_series_feeds_several_accounts_and_groups_are_expected_by_their_keys(
    tmp_path: Path,
) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - accounts: [a, b, c]
            asset: USDT
            series: {available: "4000 3000x4"}
        alert_tests:
          - at: 2m          # 9000 since 1m: pending
            expected_alerts: []
          - at: 3m
            expected_alerts:
              - rule: floor
                group: {asset: USDT}
                summary: "USDT: sum(available)=9000"
                values: {sum(available): "9000.00", USDT@a: "3000", USDT@c: "3000"}
          - at: 4m
            expected_alerts:
              - {rule: floor, group: {asset: BTC}}
              - {rule: floor, group: {asset: USDT}, values: {USDT@a: "1"}}
        """,
        GROUP_RULES,
    )

    assert [summary(check)[:2] for check in result.checks] == [
        ((), ()),
        ((), ()),
        (("floor asset=BTC",), ()),
    ]
    assert result.checks[1].different == ()
    assert result.checks[2].different == (
        "floor asset=USDT: values\n      expected: {'USDT@a': '1'}\n"
        "      got:      {'USDT@a': '3000'}",
    )


def test_an_input_series_names_one_account_or_a_list(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        """
        rule_files: [../rules/a.rules.yaml]
        input_series:
          - {account: a, accounts: [b], asset: USDT, series: {available: "1"}}
          - {asset: USDT, series: {available: "1"}}
        alert_tests: []
        """,
        GROUP_RULES,
    )

    assert [(p.line, p.column, p.message) for p in result.errors] == [
        (3, 5, "give either account (one account) or accounts (a list of them)"),
        (4, 5, "give either account (one account) or accounts (a list of them)"),
    ]
