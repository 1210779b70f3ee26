"""Two replicas in this process on one real PostgreSQL, the simulator and a real Mosquitto:
the accounts split between them, a clean stop hands the stopped one's accounts to the
other, which polls them, and alerts neither fire twice across the hand-over nor get lost.

DRILLS (tests/test_replicas.py) kills, pauses and cuts replicas off as processes; this is
the hand-over seen from inside, where each daemon's alerts and leases can be read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from balwatch.daemon import STANDBY, Daemon
from balwatch.simulator.server import Simulator
from tests.brokers import Mosquitto, subscribe
from tests.commands import run_cli
from tests.daemons import AlertLog, CountingState, running
from tests.postgres import PostgresServer
from tests.test_daemon import bitso, bitso_account, set_fields
from tests.test_docs_alerts import column
from tests.waiting import within

ACCOUNTS = ["a1", "a2", "a3", "a4", "a5", "a6"]
ALL = set(ACCOUNTS)
RULES = """\
rules:
  - name: low-usdt
    select: {assets: [USDT]}
    when: available < 1000
    severity: critical
"""


def replica_config(
    tmp_path: Path,
    name: str,
    dsn: str,
    sim: Simulator,
    broker: Mosquitto,
    accounts_named: list[str] = ACCOUNTS,
) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    accounts = "".join(bitso(a, sim.url, key=f"{a}-key") for a in accounts_named)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"instance: {name}\n"
        f"state_dir: {tmp_path / name}\n"
        f"state: {{backend: postgres, dsn: '{dsn}', lease_ttl: 3s}}\n"
        f"rules: ['{rules}']\n"
        "defaults: {poll_interval: 300ms, timeout: 2s}\n"
        "log: {format: json, level: warning}\n"
        f"accounts:\n{accounts}"
        f"sinks:\n  - {{name: mqtt, type: mqtt, url: '{broker.url}'}}\n"
    )
    return path


def held(daemon: Daemon) -> set[str]:
    assert daemon.cluster is not None
    return set(daemon.cluster.accounts())


async def until(what: str, condition: Callable[[], bool], *daemons: Daemon) -> None:
    """Wait until ``condition`` holds, looking again whenever a daemon's leases move."""

    async def wait() -> None:
        while not condition():
            events = [d.cluster.moved for d in daemons if d.cluster is not None]
            for event in events:
                event.clear()
            waits = [asyncio.create_task(e.wait()) for e in events]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()

    await within(wait(), what, 20.0)


def firings(messages: list[aiomqtt.Message], account: str) -> int:
    count = 0
    for message in messages:
        assert isinstance(message.payload, bytes)
        doc = json.loads(message.payload)
        if doc["account"] == account and doc["event"] == "firing":
            count += 1
    return count


async def cluster_status_agrees(config: Path, owned: dict[str, set[str]]) -> None:
    """``balwatch cluster status`` (a process of its own) shows both replicas live and
    each lease owned by the replica that polls its accounts."""
    code, out, err = await run_cli("cluster", "status", "-c", str(config), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {(r["instance"], r["live"]) for r in doc["replicas"]} == {
        ("replica-a", True),
        ("replica-b", True),
    }
    seen: dict[str, set[str]] = {}
    for lease in doc["leases"]:
        seen.setdefault(lease["owner"], set()).update(lease["accounts"])
        assert lease["token"] >= 1
    assert seen == owned and doc["unowned_accounts"] == []
    code, text, _ = await run_cli("cluster", "status", "-c", str(config))
    assert code == 0 and "replica-b" in text and "live" in text


async def test_cluster_status_refuses_sqlite_and_never_prints_the_dsn_password(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    sqlite = tmp_path / "one.yaml"
    sqlite.write_text(f"state_dir: {tmp_path}\n")
    code, out, err = await run_cli("cluster", "status", "-c", str(sqlite))
    assert code == 1 and "sqlite" in err and out == ""
    wrong = tmp_path / "wrong.yaml"
    dsn = postgres.dsn("no_such_db", user="nobody", password="pw-never-printed")
    wrong.write_text(f"state_dir: {tmp_path}\nstate: {{backend: postgres, dsn: '{dsn}'}}\n")
    code, out, err = await run_cli("cluster", "status", "-c", str(wrong), "--json")
    assert code == 1 and "error: " in err and 'role "nobody" does not exist' in err
    assert "pw-never-printed" not in out + err


@pytest.mark.timeout(120)
async def test_accounts_split_and_a_clean_stop_hands_them_over_with_no_alert_twice(
    tmp_path: Path, postgres_dsn: str
) -> None:
    state = CountingState([bitso_account(a, key=f"{a}-key") for a in ACCOUNTS])
    sim = Simulator(state)
    await sim.start()
    alerts_a, alerts_b = AlertLog(), AlertLog()
    topics = ["balwatch/alerts/#", "balwatch/status/+"]
    try:
        async with Mosquitto() as broker, subscribe(broker.port, topics) as watch:
            a_config = replica_config(tmp_path, "replica-a", postgres_dsn, sim, broker)
            b_config = replica_config(tmp_path, "replica-b", postgres_dsn, sim, broker)
            async with running(a_config, alerts_a) as a:
                await until("replica-a to hold every account", lambda: held(a) == ALL, a)
                async with running(b_config, alerts_b) as b:
                    await until(
                        "the accounts to split between the two",
                        lambda: held(a) | held(b) == ALL and not held(a) & held(b) and held(b),
                        a,
                        b,
                    )
                    doc = b.cluster_status()
                    assert doc is not None and set(doc["accounts"]) == held(b)  # type: ignore[arg-type]
                    assert set(doc) == column("cluster key")  # docs/alerts.md lists them all
                    await cluster_status_agrees(
                        a_config, {"replica-a": held(a), "replica-b": held(b)}
                    )
                    # One of b's accounts fires while b holds it...
                    early, late = sorted(held(b))[0], sorted(held(b))[-1]
                    set_fields(state, early, "USDT", available="10")
                    await alerts_b.event("low-usdt", early, "firing")
                # ...b stopped cleanly: a takes its accounts over and polls them.
                await until("replica-a to hold every account again", lambda: held(a) == ALL, a)
                polls = state.accounts[late].requests
                await within(state.requests(late, polls + 2), f"replica-a to poll {late}")
                # The one that fired under b is still low: a carries it on, no second
                # firing; the one that drains now fires once, from a.
                set_fields(state, late, "USDT", available="10")
                await alerts_a.event("low-usdt", late, "firing")
                set_fields(state, early, "USDT", available="5000")
                await alerts_a.event("low-usdt", early, "resolved")
            messages = await watch.drain()
    finally:
        await sim.stop()
    sent = [m for m in messages if m.topic.matches("balwatch/alerts/#")]
    assert firings(sent, early) == 1
    assert firings(sent, late) == 1
    by_a = [(x.account, x.event) for x in alerts_a.alerts]
    by_b = [(x.account, x.event) for x in alerts_b.alerts]
    assert by_b == [(early, "firing")]  # fired under b, carried on and resolved by a
    assert [e for e in by_a if e[0] in (early, late)] == [(late, "firing"), (early, "resolved")]
    status = {m.topic.value: m.payload for m in messages if m.topic.matches("balwatch/status/+")}
    assert status == {
        "balwatch/status/replica-a": b"offline",
        "balwatch/status/replica-b": b"offline",
    }


@pytest.mark.timeout(120)
async def test_a_replica_with_nothing_to_hold_is_up_as_a_standby_and_a_reload_gives_it_work(
    tmp_path: Path, postgres_dsn: str
) -> None:
    state = CountingState([bitso_account(a, key=f"{a}-key") for a in ("solo", "second")])
    sim = Simulator(state)
    await sim.start()
    try:
        async with Mosquitto() as broker:

            def configs(accounts: list[str]) -> tuple[Path, Path]:
                return (
                    replica_config(tmp_path, "replica-a", postgres_dsn, sim, broker, accounts),
                    replica_config(tmp_path, "replica-b", postgres_dsn, sim, broker, accounts),
                )

            a_config, b_config = configs(["solo"])
            async with running(a_config, AlertLog()) as a:
                await until("replica-a to hold solo", lambda: held(a) == {"solo"}, a)
                # running() returned: b is started (systemd READY) whatever it holds
                async with running(b_config, AlertLog()) as b:
                    await until(
                        "solo to settle on the replica it hashes to",
                        lambda: len(held(a)) + len(held(b)) == 1 and held(a) | held(b) == {"solo"},
                        a,
                        b,
                    )
                    standby = a if not held(a) else b
                    assert standby.ready() == (False, [STANDBY])
                    configs(["solo", "second"])
                    b_config.write_text(b_config.read_text().replace("replica-b", "renamed"))
                    assert await a.reload() and await b.reload()
                    assert b.loaded.config.instance == "replica-b"  # a replica's name stays
                    await until(
                        "the two accounts to split, one each",
                        lambda: len(held(a)) == len(held(b)) == 1,
                        a,
                        b,
                    )
                    (mine,) = held(standby)
                    polls = state.accounts[mine].requests
                    # a poller asks again only once its last answer was handled
                    await within(state.requests(mine, polls + 2), f"the standby to poll {mine}")
                    assert standby.ready() == (True, [])
    finally:
        await sim.stop()


GROUP_RULES = """\
rules:
  - name: treasury-floor
    select: {assets: [USDT]}
    group_by: [asset]
    when: sum(available) < 15000
    severity: critical
"""


@pytest.mark.timeout(120)
async def test_a_portfolio_alert_moves_whole_with_its_accounts_and_resolves_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A grouped rule over both accounts puts them under one key: one replica polls both,
    the other stands by; a clean stop hands the group's firing alert over whole."""
    accounts = ["g1", "g2"]
    state = CountingState([bitso_account(a, key=f"{a}-key") for a in accounts])
    sim = Simulator(state)
    await sim.start()
    alerts_a, alerts_b = AlertLog(), AlertLog()
    try:
        async with Mosquitto() as broker:
            a_config = replica_config(tmp_path, "replica-a", postgres_dsn, sim, broker, accounts)
            b_config = replica_config(tmp_path, "replica-b", postgres_dsn, sim, broker, accounts)
            (tmp_path / "rules.yaml").write_text(GROUP_RULES)
            async with running(a_config, alerts_a) as a:
                await until("replica-a to hold both", lambda: held(a) == set(accounts), a)
                async with running(b_config, alerts_b) as b:
                    await until(
                        "the one key to settle on one replica",
                        lambda: (
                            {frozenset(held(a)), frozenset(held(b))}
                            == {frozenset(), frozenset(accounts)}
                        ),
                        a,
                        b,
                    )
                    owner, standby = (a, b) if held(a) else (b, a)
                    logs = {id(a): alerts_a, id(b): alerts_b}
                    set_fields(state, "g1", "USDT", available="1000")  # 1,000 + 10,000
                    await logs[id(owner)].wait_for(
                        lambda x: x.rule == "treasury-floor" and x.event == "firing"
                    )
                    owner.stop()  # ends owner's running() at exit; the standby takes over
                    await until(
                        "the standby to hold both", lambda: held(standby) == set(accounts), standby
                    )
                    polls = state.accounts["g2"].requests
                    await within(state.requests("g2", polls + 2), "the standby to poll g2")
                    set_fields(state, "g1", "USDT", available="10000")
                    await logs[id(standby)].wait_for(
                        lambda x: x.rule == "treasury-floor" and x.event == "resolved"
                    )
    finally:
        await sim.stop()
    every = [(x.rule, x.event) for x in alerts_a.alerts + alerts_b.alerts]
    assert sorted(every) == [("treasury-floor", "firing"), ("treasury-floor", "resolved")]
