"""The balwatch command as a user runs it: real processes, real simulator, real files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import sys
from collections import deque
from pathlib import Path

import pytest

from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.brokers import Mosquitto, free_port, subscribe
from tests.commands import run_cli
from tests.conftest import StartSim

BITSO_SECRET = "TOPSECRET-bitso-9f8e7d6c"
COINW_SECRET = "TOPSECRET-coinw-1a2b3c4d"
KUNA_PASSWORD = "TOPSECRET-kuna-5e6f7a8b"
SECRETS = (BITSO_SECRET, COINW_SECRET, KUNA_PASSWORD, "wrong-secret-00ff")


def write_config(path: Path, url: str) -> Path:
    path.write_text(
        f"""
accounts:
  - name: bitso-good
    exchange: bitso
    base_url: {url}
    credentials: {{api_key: bk1, api_secret: "${{BITSO_SECRET}}"}}
  - name: bitso-badsecret
    exchange: bitso
    base_url: {url}
    credentials: {{api_key: bk2, api_secret: "${{WRONG_SECRET}}"}}
  - name: coinw-throttled
    exchange: coinw
    base_url: {url}
    credentials: {{api_key: ck1, api_secret: "${{COINW_SECRET}}"}}
  - name: kuna-jwt
    exchange: kunacore
    base_url: {url}
    credentials: {{merchant_id: m1, login: ops@example.com, password: "${{KUNA_PASSWORD}}"}}
"""
    )
    return path


ENV = {
    "BITSO_SECRET": BITSO_SECRET,
    "WRONG_SECRET": "wrong-secret-00ff",
    "COINW_SECRET": COINW_SECRET,
    "KUNA_PASSWORD": KUNA_PASSWORD,
}


def sim_accounts() -> list[SimAccount]:
    return [
        SimAccount(
            "bitso-good",
            "bitso",
            api_key="bk1",
            api_secret=BITSO_SECRET,
            balances={"bitso": {"USDT": {"available": "4210.55", "locked": "10"}}},
        ),
        SimAccount(
            "bitso-badsecret",
            "bitso",
            api_key="bk2",
            api_secret="the-real-secret",
            balances={"bitso": {"USDT": {"available": "1"}}},
        ),
        SimAccount(
            "coinw-throttled",
            "coinw",
            api_key="ck1",
            api_secret=COINW_SECRET,
            balances={"coinw": {"BTC": {"available": "0.5", "locked": "0"}}},
            faults=deque([Fault(FaultKind.THROTTLE)]),
        ),
        SimAccount(
            "kuna-jwt",
            "kunacore",
            merchant_id="m1",
            login="ops@example.com",
            password=KUNA_PASSWORD,
            balances={"kunacore": {"USDT": {"available": "88000", "aml_locked": "25"}}},
        ),
    ]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


async def test_balances_prints_rows_and_failures_without_secrets(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(*sim_accounts())
    config = write_config(tmp_path / "balwatch.yaml", sim.url)

    code, out, err = await run_cli("balances", "-c", str(config), env=ENV)

    assert code == 3, (out, err)
    assert "bitso-good" in out and "4210.55" in out
    assert "kuna-jwt" in out and "88000" in out
    failed = out.split("failed polls:")[1]
    assert "bitso-badsecret" in failed and "auth" in failed
    assert "coinw-throttled" in failed and "rate_limited" in failed
    # one structured log event per failed poll, naming account and kind
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = {e["account"]: e["kind"] for e in events if e["event"] == "poll_failed"}
    assert failures == {"bitso-badsecret": "auth", "coinw-throttled": "rate_limited"}
    assert_no_secret(out, err)


async def test_balances_json_keeps_exact_decimals_and_nulls(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(*sim_accounts())
    config = write_config(tmp_path / "balwatch.yaml", sim.url)

    code, out, err = await run_cli("balances", "-c", str(config), "--json", env=ENV)

    assert code == 3
    doc = json.loads(out)
    rows = {(r["account"], r["asset"]): r for r in doc["balances"]}
    bitso = rows[("bitso-good", "USDT")]
    assert bitso["available"] == "4210.55" and bitso["total"] == "4220.55"
    assert bitso["hold"] is None  # Bitso does not report it: null, never 0
    kuna = rows[("kuna-jwt", "USDT")]
    assert kuna["aml_locked"] == "25" and kuna["locked"] is None
    assert {e["account"]: e["kind"] for e in doc["errors"]} == {
        "bitso-badsecret": "auth",
        "coinw-throttled": "rate_limited",
    }
    assert_no_secret(out, err)


async def test_check_reports_every_error_with_position(tmp_path: Path) -> None:
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        "accounts:\n"
        "  - name: a\n"
        "    exchange: bitsoo\n"
        "    credentials: {api_key: k}\n"
        "  - name: b\n"
        "    exchange: bitso\n"
        "    poll_intervall: 30s\n"
        "    credentials: {api_key: k, api_secret: s}\n"
    )
    code, _, err = await run_cli("check", "-c", str(config))
    assert code == 1
    assert f"{config}:3:15: error:" in err and "bitsoo" in err
    assert f"{config}:7:5: error:" in err and "poll_intervall" in err


async def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "balwatch.yaml", "http://127.0.0.1:1")
    code, out, _ = await run_cli("check", "-c", str(config), env=ENV)
    assert code == 0 and "ok (4 accounts" in out


async def test_missing_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "balwatch.yaml", "http://127.0.0.1:1")
    env = {k: v for k, v in ENV.items() if k != "COINW_SECRET"}
    code, _, err = await run_cli("check", "-c", str(config), env={**env, "COINW_SECRET": ""})
    # an empty secret is as wrong as a missing one; either way the file position is given
    assert code == 1 and f"{config}:" in err
    assert_no_secret(err)


DEMO_RULES = ("low-available", "large-pending-withdrawal", "aml-lock", "account-stale")


async def test_demo_tells_the_whole_story_without_setup() -> None:
    # Played at four times the speed, with a broker of the test's own: the same story.
    async with Mosquitto() as broker, subscribe(broker.port, ["balwatch-demo/#"]) as mqtt:
        code, out, err = await run_cli("demo", "--speed", "4", "--mqtt-port", str(broker.port))
        published = await mqtt.drain()
    assert code == 0, err
    events = [line.split("] ", 1)[1] for line in out.splitlines() if "] " in line]
    assert "alerts also go to MQTT, topics balwatch-demo/#" in events, out
    for rule in DEMO_RULES:
        assert any(e.startswith("FIRING") and f" {rule}:" in e for e in events), (rule, out)
        assert any(e.startswith("RESOLVED") and f" {rule}:" in e for e in events), (rule, out)
    assert any("sudden-drop: coinapi-ems BINANCESPOT BTC" in e for e in events), out
    # A resolve says what people saw when it fired, or the rule's resolved_summary.
    assert "RESOLVED critical low-available: bitso-treasury USDT: only 3000.00 available" in events
    # On call silenced coinw-spot during its outage: its alerts show, and say no sink heard.
    [silence] = [e.split()[1] for e in events if e.startswith("silence ")]
    assert "for account=coinw-spot, 1h" in out, out
    muted = f" (silenced by {silence}: no sink notified)"
    assert f"RESOLVED warning  account-stale: coinw-spot: polls answer again{muted}" in events
    assert any(e.startswith("FIRING   warning  account-stale: coinw-spot") and e.endswith(muted)
               for e in events), out  # fmt: skip
    assert "Traceback" not in err
    # Every alert printed went to the broker too, fired and resolved.
    sent = [
        (doc["rule"], doc["event"])
        for doc in (
            json.loads(m.payload)
            for m in published
            if m.topic.value.startswith("balwatch-demo/alerts/") and isinstance(m.payload, bytes)
        )
    ]
    for rule in DEMO_RULES:
        if rule == "account-stale":  # silenced: neither its firing nor its resolve went out
            assert not [event for name, event in sent if name == rule], sent
            continue
        assert (rule, "firing") in sent and (rule, "resolved") in sent, (rule, sent)


async def test_simulate_then_balances_as_in_the_readme(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balwatch",
        "simulate",
        "--port",
        "0",
        "--write-config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "simulate exited early"
            if "wrote a config" in line:
                break
        code, out, err = await run_cli("balances", "-c", str(config))
        assert code == 0, err
        assert "bitso-treasury" in out and "coinw-spot" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("command", ["balances", "check"])
async def test_missing_config_file_is_reported(command: str, tmp_path: Path) -> None:
    code, _, err = await run_cli(command, "-c", str(tmp_path / "nope.yaml"))
    assert code == 1 and "nope.yaml:1:1" in err


def run_config(tmp_path: Path, state_dir: Path, extra: str = "") -> Path:
    """A config for `balwatch run` with one account (never reached: start-up fails first)."""
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        f"state_dir: {state_dir}\n{extra}accounts:\n"
        "  - {name: a, exchange: coinw, base_url: 'http://127.0.0.1:9',"
        " credentials: {api_key: k, api_secret: s}}\n"
    )
    return config


@pytest.mark.parametrize("unusable", ["state_dir is a file", "http port taken"])
async def test_run_refuses_an_unusable_setting_with_a_message_not_a_traceback(
    tmp_path: Path, unusable: str
) -> None:
    """`balwatch check` cannot know these; `run` must still say what is wrong, exit 1."""
    state_dir = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if unusable == "state_dir is a file":
            state_dir.write_text("not a directory")
            port = free_port()
        config = run_config(tmp_path, state_dir, f"http: {{listen: '127.0.0.1:{port}'}}\n")
        code, _, err = await run_cli("run", "-c", str(config))
    assert code == 1 and "Traceback" not in err, err
    expected = {
        "state_dir is a file": f"{state_dir}: cannot be the state directory",
        "http port taken": f"error: http.listen 127.0.0.1:{port}: ",
    }[unusable]
    assert expected in err, err


async def test_run_refuses_outbox_tables_from_a_newer_balwatch_with_a_message(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with contextlib.closing(sqlite3.connect(state_dir / "balwatch.db")) as conn:
        conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES ('outbox', 99)")
        conn.commit()
    code, _, err = await run_cli("run", "-c", str(run_config(tmp_path, state_dir)))
    assert code == 1 and "Traceback" not in err, err
    assert f"{state_dir / 'balwatch.db'}: cannot use the state database" in err, err
    assert "outbox tables are at version 99, newer than this balwatch" in err, err


async def test_check_masks_a_configured_secret_quoted_by_a_problem(tmp_path: Path) -> None:
    """A key pasted into a rule file by mistake is quoted by the problem, masked."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(
        f"rules:\n  - {{name: r, when: available < 1, severity: '{BITSO_SECRET}'}}\n"
    )
    config = write_config(tmp_path / "balwatch.yaml", "http://127.0.0.1:1")
    code, out, err = await run_cli("check", "-c", str(config), env=ENV)
    assert code == 1 and "r.yaml:2:" in err and "***" in err
    assert_no_secret(out, err)
