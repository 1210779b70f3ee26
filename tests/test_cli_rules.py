"""`balwatch check`, `eval`, `test` and `schema` as a user runs them: real processes, files,
and (for eval) a real simulator. Also runs the example rule tests in rules/tests, for CI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import pytest

from balwatch.explain import Poll, explain
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.rules.select import Selector
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.commands import run_cli
from tests.conftest import StartSim

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rules"
SCHEMAS = {
    "config": "config.schema.json",
    "rules": "rules.schema.json",
    "tests": "ruletest.schema.json",
    "alert": "alert.schema.json",
}


def balwatch(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balwatch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --------------------------------------------------------------------------- examples


def test_example_rule_tests_pass() -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in (EXAMPLES / "tests").glob("*.yaml"))
    assert len(files) >= 5

    done = balwatch("test", *files)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith("passed, 0 failed")
    assert done.stderr == ""


def test_example_config_and_rules_check_clean() -> None:
    done = balwatch("check", "-c", "rules/balwatch.example.yaml")

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not even a warning
    assert done.stdout == (
        "rules/balwatch.example.yaml: ok (4 accounts, 9 rules in 8 files, 3 sinks)\n"
    )


def test_every_example_file_names_its_schema() -> None:
    kinds = {"balwatch.example.yaml": "config"}
    files = sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "tests").glob("*.yaml"))
    for file in files:
        kind = kinds.get(file.name, "tests" if file.parent.name == "tests" else "rules")
        first = file.read_text().splitlines()[0]
        prefix = "# yaml-language-server: $schema="
        assert first.startswith(prefix), file
        target = (file.parent / first.removeprefix(prefix)).resolve()
        assert target == (EXAMPLES / "schema" / SCHEMAS[kind]).resolve(), file


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_committed_schemas_are_current(kind: str) -> None:
    done = balwatch("schema", *([] if kind == "config" else [f"--{kind}"]))

    assert done.returncode == 0, done.stderr
    committed = (EXAMPLES / "schema" / SCHEMAS[kind]).read_text()
    assert done.stdout == committed, f"regenerate rules/schema/{SCHEMAS[kind]}"


def test_schema_describes_keys_and_exchange_options() -> None:
    rules = json.loads(balwatch("schema", "--rules").stdout)
    rule = rules["$defs"]["RuleModel"]
    assert rule["additionalProperties"] is False
    assert {"when", "clear", "for", "repeat", "notify", "select"} <= set(rule["properties"])
    assert rules["$defs"]["RuleDefaults"]["properties"]["for"]["default"] == "0s"

    config = json.loads(balwatch("schema").stdout)
    account = config["$defs"]["AccountConfig"]
    assert account["properties"]["exchange"]["enum"] == [
        "bitso",
        "ccxt",
        "coinapi",
        "coinw",
        "kunacore",
    ]
    ccxt = next(c for c in account["allOf"] if c["if"]["properties"]["exchange"]["const"] == "ccxt")
    assert ccxt["then"]["properties"]["options"]["required"] == ["id"]
    assert ccxt["then"]["properties"]["credentials"]["propertyNames"]["enum"] == [
        "api_key",
        "api_secret",
        "password",
        "uid",
    ]
    prices = config["$defs"]["PricesConfig"]["properties"]
    assert {"static", "sources", "max_age"} <= set(prices)
    kuna = next(
        c for c in account["allOf"] if c["if"]["properties"]["exchange"]["const"] == "kunacore"
    )
    assert "wallet_id" in kuna["then"]["properties"]["options"]["properties"]
    assert config["$defs"]["DefaultsConfig"]["properties"]["poll_interval"]["default"] == "30s"


def test_schema_kinds_are_exclusive() -> None:
    assert balwatch("schema", "--rules", "--tests").returncode == 2


# --------------------------------------------------------------------------- check


CONFIG = """
rules: ["rules/*.yaml", "more/*.yaml"]
accounts:
  - name: coinw-spot
    exchange: coinw
    base_url: http://127.0.0.1:8700    # a simulator: keys written out draw no warning
    credentials: {api_key: k, api_secret: s}
sinks:
  - {name: ops-mqtt, type: mqtt, url: "mqtt://127.0.0.1:1883"}
"""


def test_check_reports_errors_of_every_rule_file(tmp_path: Path) -> None:
    config = write(tmp_path / "balwatch.yaml", CONFIG)
    write(tmp_path / "rules" / "a.yaml", "rules:\n  - name: a\n    whn: total < 1\n")
    write(tmp_path / "more" / "b.yaml", "rules:\n  - {name: b, when: total < 1, notify: [chat]}\n")

    done = balwatch("check", "-c", config.name, cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "rules/a.yaml:3:5: error: unknown key 'whn' in rule 'a' (did you mean 'when'?); "
        "expected one of: name, description, select, group_by, when, clear, for, repeat, "
        "severity, summary, resolved_summary, labels, notify, mute_during, active_during",
        "more/b.yaml:2:41: error: unknown sink 'chat' in notify; configured sinks: ops-mqtt",
    ]


def test_check_with_warnings_only_succeeds(tmp_path: Path) -> None:
    config = write(tmp_path / "balwatch.yaml", CONFIG)
    write(
        tmp_path / "rules" / "a.yaml",
        "rules:\n  - name: pending\n    when: pending_withdrawal > 0\n",
    )

    done = balwatch("check", "-c", config.name, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "balwatch.yaml:1:25: warning: no rule file matches 'more/*.yaml'",
        "rules/a.yaml:3:11: warning: pending_withdrawal is never reported by coinw, the only "
        "source rule 'pending' selects (accounts: coinw-spot): the rule never has data",
    ]
    assert done.stdout == ("balwatch.yaml: ok (1 account, 1 rule in 1 file, 1 sink, 2 warnings)\n")


def test_check_stops_at_config_errors(tmp_path: Path) -> None:
    config = write(tmp_path / "balwatch.yaml", "rules: rules/*.yaml\n")

    done = balwatch("check", "-c", config.name, cwd=tmp_path)

    assert done.returncode == 1
    assert done.stderr.startswith("balwatch.yaml:1:8: error:")


# --------------------------------------------------------------------------- test


def test_failing_rule_test_shows_a_diff_and_exits_1(tmp_path: Path) -> None:
    write(tmp_path / "r.yaml", "rules:\n  - {name: low, when: available < 10}\n")
    test = write(
        tmp_path / "t.yaml",
        """
        rule_files: [r.yaml]
        input_series:
          - {account: a, asset: USDT, series: {available: "20 5"}}
        alert_tests:
          - at: 0s
            expected_alerts: []
          - at: 1m
            expected_alerts: [{rule: low, account: a, asset: BTC}]
        """,
    )
    broken = write(tmp_path / "broken.yaml", "rule_files: [r.yaml]\n")

    done = balwatch("test", test.name, broken.name, cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "FAIL t.yaml: 2 alert tests, 1 failed",
        "  t.yaml:7:5: at 1m:",
        "    missing:    low a BTC",
        "    unexpected: low a test/USDT "
        "(severity warning, summary 'low a test/USDT: available=5')",
        "ERROR broken.yaml: could not run",
        "1 passed, 1 failed, 1 file with errors",
    ]
    assert (
        done.stderr
        == "broken.yaml:1:1: error: missing required key 'alert_tests' in rule test file\n"
    )


# --------------------------------------------------------------------------- eval


async def test_eval_shows_each_rule_per_row_and_sends_nothing(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(
        SimAccount(
            "bitso-treasury",
            "bitso",
            api_key="bk",
            api_secret="bs",
            balances={"bitso": {"USDT": {"available": "4210.55", "locked": "10"}}},
        ),
        SimAccount(
            "kuna-custody",
            "kunacore",
            merchant_id="m1",
            login="ops@example.com",
            password="kp",
            balances={"kunacore": {"USDT": {"available": "88000", "aml_locked": "25"}}},
        ),
        SimAccount(
            "coinw-spot",
            "coinw",
            api_key="ck",
            api_secret="cs",
            balances={"coinw": {"BTC": {"available": "0.5", "locked": "0"}}},
            faults=deque([Fault(FaultKind.THROTTLE)]),
        ),
    )
    config = write(
        tmp_path / "balwatch.yaml",
        f"""
        rules: ["{EXAMPLES}/*.rules.yaml"]
        accounts:
          - name: bitso-treasury
            exchange: bitso
            base_url: {sim.url}
            credentials: {{api_key: bk, api_secret: bs}}
          - name: kuna-custody
            exchange: kunacore
            base_url: {sim.url}
            credentials: {{merchant_id: m1, login: ops@example.com, password: kp}}
          - name: coinw-spot
            exchange: coinw
            base_url: {sim.url}
            credentials: {{api_key: ck, api_secret: cs}}
        sinks:
          - {{name: ops-mqtt, type: mqtt, url: "mqtt://127.0.0.1:1"}}
          - {{name: ops-chat, type: webhook, url: "http://127.0.0.1:1/hook"}}
        """,
    )

    code, out, err = await run_cli("eval", "-c", str(config))

    assert code == 3, err
    rows = {tuple(line.split()[:3]): line for line in out.splitlines()}
    low = rows[("low-available", "bitso-treasury", "bitso/USDT")]
    assert "true" in low and "available=4210.55" in low
    assert low.endswith("would be pending (fires after 2m)")
    aml = rows[("aml-lock", "kuna-custody", "kunacore/USDT")]
    assert aml.endswith("would fire: kuna-custody USDT: 25 locked by AML")
    drop = rows[("sudden-drop", "bitso-treasury", "bitso/USDT")]
    assert "no data" in drop
    assert rows[("polls-failing", "coinw-spot", "false")].split()[3] == "failures=1"
    failed = out.split("failed polls:")[1]
    assert "coinw-spot" in failed and "rate_limited" in failed


def test_eval_says_a_selected_accounts_poll_failed_not_that_the_rule_selects_nothing() -> None:
    dust = Rule(
        name="dust",
        when=parse_expression("total >= 0"),
        selector=Selector(accounts=("broken",)),
    )
    table = explain([dust], [Poll("broken", "coinw", None)], [], [])
    [line] = [line for line in table.splitlines() if line.startswith("dust")]
    assert line.split()[:4] == ["dust", "broken", "-", "no"]
    assert line.endswith("poll failed: no rows")
    assert "selects nothing" in explain([dust], [Poll("other", "coinw", None)], [], [])
