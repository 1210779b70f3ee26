"""The daemon in-process: restarts, a broker outage, and the per-key rate limit under reloads.

Real simulator, real Mosquitto and webhook receiver, the real :class:`Daemon` with its
SQLite state: only the process boundary is skipped (``tests/test_e2e.py`` has it). Waits are
on alerts the daemon hands out (``on_alerts``), MQTT messages, webhook requests, simulator
requests and sd_notify datagrams, never on the clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import resource
import signal
import socket
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from structlog.testing import capture_logs

import balwatch.daemon
from balwatch.adapters.bitso import BitsoAdapter
from balwatch.adapters.coinw import CoinwAdapter
from balwatch.alert import fingerprint as fingerprint_of
from balwatch.daemon import Daemon, StartError, capture_signals
from balwatch.ratelimit import with_headroom
from balwatch.rules.engine import AlertState
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount, SimState
from balwatch.state.base import StateError
from balwatch.state.sqlite import ENGINE_SCHEMA, migrate, open_db
from balwatch.systemd import Notifier
from tests.alertschema import schema_errors
from tests.brokers import Mosquitto, subscribe
from tests.conftest import StartSim
from tests.daemons import WAIT, AlertLog, CountingState, running
from tests.notify import Notifications, notify_socket
from tests.webhooks import WebhookReceiver


def set_fields(state: SimState, account: str, asset: str, **fields: str) -> None:
    sim = state.accounts[account]
    venue = next(v for v, assets in sim.balances.items() if asset in assets)
    sim.balances[venue][asset].update(fields)


def write_config(
    path: Path,
    *,
    state_dir: Path,
    rules: Path,
    accounts: str,
    sinks: str = "",
    interval: str = "300ms",
) -> Path:
    path.write_text(
        f"state_dir: {state_dir}\n"
        f"rules: ['{rules}']\n"
        f"defaults: {{poll_interval: {interval}, timeout: 2s}}\n"
        "log: {format: json, level: warning}\n"
        f"accounts:\n{accounts}" + (f"sinks:\n{sinks}" if sinks else "")
    )
    return path


def bitso(name: str, url: str, key: str = "k-bitso") -> str:
    return (
        f"  - {{name: {name}, exchange: bitso, base_url: '{url}', "
        f"credentials: {{api_key: {key}, api_secret: s-bitso}}}}\n"
    )


def coinw(name: str, url: str, key: str = "k-coinw") -> str:
    return (
        f"  - {{name: {name}, exchange: coinw, base_url: '{url}', "
        f"credentials: {{api_key: {key}, api_secret: s-coinw}}}}\n"
    )


def bitso_account(name: str = "treasury", key: str = "k-bitso", **usdt: str) -> SimAccount:
    fields = {"total": "10000", "available": "10000", "locked": "0", **usdt}
    mxn = {"total": "90000", "available": "90000", "locked": "0"}
    return SimAccount(
        name,
        "bitso",
        api_key=key,
        api_secret="s-bitso",
        balances={"bitso": {"USDT": fields, "MXN": mxn}},
    )


async def treasury_daemon_files(
    tmp_path: Path, start_sim: StartSim, rules_text: str
) -> tuple[Simulator, Path, Path]:
    """A simulated Bitso ``treasury`` account, a rule file and a config using both:
    (simulator, config, rules)."""
    sim = await start_sim(bitso_account())
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text)
    config = write_config(
        tmp_path / "balwatch.yaml", state_dir=tmp_path / "state", rules=rules,
        accounts=bitso("treasury", sim.url),
    )  # fmt: skip
    return sim, config, rules


def coinw_account(name: str = "spot", key: str = "k-coinw") -> SimAccount:
    return SimAccount(
        name,
        "coinw",
        api_key=key,
        api_secret="s-coinw",
        balances={"coinw": {"USDT": {"available": "10000", "locked": "0"}}},
    )


# --- restart ---------------------------------------------------------------------------

RESTART_RULES = """\
rules:
  - name: low-available
    select: {assets: [USDT]}
    when: available < 5000
    clear: available >= 6000
    for: 0s
    severity: critical
  - name: account-stale
    when: age > 1s
    for: 0s
  - name: account-very-stale
    when: age > 4s
    for: 0s
"""


async def test_restart_neither_refires_nor_forgets_and_age_survives(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(bitso_account(available="3000"), coinw_account())
    sim.state.accounts["spot"].faults.append(Fault(FaultKind.STATUS, times=None, status=503))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RESTART_RULES)
    async with WebhookReceiver() as hook:
        config = write_config(
            tmp_path / "balwatch.yaml",
            state_dir=tmp_path / "state",
            rules=rules,
            accounts=bitso("treasury", sim.url) + coinw("spot", sim.url),
            sinks=f"  - {{name: hook, type: webhook, url: '{hook.url}'}}\n",
        )
        first = AlertLog()
        async with running(config, first) as daemon:
            stale_since = next(
                a for a in daemon.engine.accounts() if a.account == "spot"
            ).first_seen
            low = await first.event("low-available", "treasury", "firing")
            stale = await first.event("account-stale", "spot", "firing")
        assert not [a for a in first.alerts if a.event != "firing"], first.alerts

        second = AlertLog()
        restarted_at = time.time()
        async with running(config, second) as daemon:
            # Ready means every account was polled: the bitso row still below 5000 and the
            # coinw poll failed again, so both rules were evaluated on restored state.
            firing = {s.rule for s in daemon.engine.firing()}
            assert firing == {"low-available", "account-stale"}, (
                f"after the restart firing: {firing}; a restored alert was dropped, or "
                "account-stale resolved because age started again at zero"
            )
            # account-very-stale (age > 4s) fires 4 s after coinw was first seen *by the
            # first run*, well within 4 s of the restart: age kept counting across it.
            very = await second.event("account-very-stale", "spot", "firing")
            age = float(very.values["age"])
            since_first_run = very.started_at.timestamp() - stale_since
            assert age > 4 and abs(age - since_first_run) < 0.01, (
                f"age {age} at firing, {since_first_run:.3f}s since the first run saw coinw"
            )
            assert very.started_at.timestamp() - restarted_at < 4, (
                f"very-stale fired {very.started_at.timestamp() - restarted_at:.1f}s after the "
                "restart: age started again at zero"
            )
            before_recovery = list(second.alerts)
            assert [(a.rule, a.event) for a in before_recovery] == [
                ("account-very-stale", "firing")
            ], f"a restart must not re-fire or falsely resolve: {before_recovery}"

            set_fields(sim.state, "treasury", "USDT", total="9000", available="9000")
            resolved = await second.event("low-available", "treasury", "resolved")
            assert resolved.fingerprint == low.fingerprint
            assert resolved.started_at == low.started_at, "the alert carried over, not a new one"
            sim.state.accounts["spot"].faults.clear()
            stale_resolved = await second.event("account-stale", "spot", "resolved")
            assert stale_resolved.fingerprint == stale.fingerprint
            await second.event("account-very-stale", "spot", "resolved")

        # At the webhook: one firing and one resolved per alert, over both runs.
        bodies = [r.json() for r in hook.requests]
        events = sorted((b["rule"], b["event"]) for b in bodies)
        assert events == sorted(
            [
                ("low-available", "firing"),
                ("low-available", "resolved"),
                ("account-stale", "firing"),
                ("account-stale", "resolved"),
                ("account-very-stale", "firing"),
                ("account-very-stale", "resolved"),
            ]
        ), events


# --- broker outage ---------------------------------------------------------------------

OUTAGE_RULES = """\
rules:
  - name: low-available
    when: available < 5000
    for: 0s
"""


@contextlib.asynccontextmanager
async def watcher(port: int, received: list[dict[str, Any]]) -> AsyncIterator[asyncio.Event]:
    """A persistent-session subscriber (what the broker queues for it survives a restart);
    the yielded event is set whenever a message arrives."""
    arrived = asyncio.Event()
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="daemon-outage-watcher",
        clean_session=False,
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe("balwatch/alerts/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(json.loads(message.payload))
                arrived.set()

        task = asyncio.create_task(read())
        try:
            yield arrived
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def wait_ids(
    received: list[dict[str, Any]], arrived: asyncio.Event, ids: set[str], timeout: float
) -> None:
    async with asyncio.timeout(timeout):
        while not ids <= {d["id"] for d in received}:
            arrived.clear()
            await arrived.wait()


async def test_broker_outage_mid_run_every_alert_arrives_in_order(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(bitso_account(), coinw_account())
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTAGE_RULES)
    received: list[dict[str, Any]] = []
    log = AlertLog()
    targets = [("treasury", "USDT"), ("treasury", "MXN"), ("spot", "USDT")]

    async def toggle(low: bool) -> None:
        """Every target below or above 5000; returns once the daemon produced the alerts."""
        mark = len(log.alerts)
        for account, asset in targets:
            amount = "100" if low else "10000"
            fields = (
                {"available": amount}
                if account == "spot"
                else {"total": amount, "available": amount}
            )
            set_fields(sim.state, account, asset, **fields)
        event = "firing" if low else "resolved"
        for account, asset in targets:
            await log.event("low-available", account, event, asset=asset, after=mark)

    async with Mosquitto(persistence=True) as broker:
        config = write_config(
            tmp_path / "balwatch.yaml",
            state_dir=tmp_path / "state",
            rules=rules,
            accounts=bitso("treasury", sim.url) + coinw("spot", sim.url),
            sinks=f"  - {{name: mqtt, type: mqtt, url: '{broker.url}'}}\n",
        )
        async with running(config, log) as daemon:
            async with watcher(broker.port, received) as arrived:
                await toggle(low=True)
                await wait_ids(received, arrived, {a.id for a in log.alerts}, WAIT)
                await broker.stop()
            # The broker is down: three fingerprints go through two more cycles each.
            produced_in_outage = len(log.alerts)
            await toggle(low=False)
            await toggle(low=True)
            await toggle(low=False)
            await toggle(low=True)
            assert len(log.alerts) - produced_in_outage == 12
            await broker.start()
            async with watcher(broker.port, received) as arrived:
                # The sink reconnects (backoff <= 10 s) and the outbox retries each
                # fingerprint's head with its own backoff (<= 16 s after 4 failed tries).
                await wait_ids(received, arrived, {a.id for a in log.alerts}, 60)
                await toggle(low=False)
                await wait_ids(received, arrived, {a.id for a in log.alerts}, WAIT)
            await asyncio.wait_for(daemon.outbox.wait_settled(), WAIT)  # acks committed
            stats = daemon.outbox.stats()["mqtt"]
            assert stats.failed > 0, "deliveries were attempted during the outage"
            assert stats.depth == 0 and stats.dead == 0, stats

    produced = [a.id for a in log.alerts]
    arrived_ids = [d["id"] for d in received]
    assert set(arrived_ids) == set(produced), "every alert arrived, and nothing else"
    first_arrivals = list(dict.fromkeys(arrived_ids))
    by_fingerprint: dict[str, list[str]] = defaultdict(list)
    for alert in log.alerts:
        by_fingerprint[alert.fingerprint].append(alert.id)
    assert len(by_fingerprint) == 3
    for fingerprint, ids in by_fingerprint.items():
        mine = [i for i in first_arrivals if i in set(ids)]
        assert mine == ids, f"{fingerprint}: arrived out of order"
    # Duplicates (at-least-once) only ever repeat an id with the same document.
    docs: dict[str, dict[str, Any]] = {}
    for doc in received:
        assert docs.setdefault(doc["id"], doc) == doc


# --- rate limit per key ----------------------------------------------------------------


def many_rules(offset: int) -> str:
    lines = ["rules:"]
    for i in range(40):
        select = ["USDT"], ["MXN"], ["USDT", "MXN"]
        lines += [
            f"  - name: r{i + offset}",
            f"    select: {{assets: {select[i % 3]}}}",
            f"    when: available < {1 + i}",
            "    for: 1s",
        ]
    return "\n".join(lines) + "\n"


def paced(times: list[float], spacing: float) -> float:
    """The smallest gap between request k and k+n, divided by n, over the whole run: how
    fast the requests came on average at their densest (1 / requests per second)."""
    worst = float("inf")
    for n in (4, 8):
        for k in range(len(times) - n):
            worst = min(worst, (times[k + n] - times[k]) / n)
    return worst


async def test_shared_keys_never_exceed_the_documented_limit_across_a_reload(
    tmp_path: Path,
) -> None:
    state = CountingState([bitso_account("bitso-key-owner"), coinw_account("coinw-key-owner")])
    async with Simulator(state) as sim:
        rules = tmp_path / "rules.yaml"
        rules.write_text(many_rules(0))

        def accounts(n: int) -> str:
            return "".join(bitso(f"b{i}", sim.url) + coinw(f"c{i}", sim.url) for i in range(n))

        config = write_config(
            tmp_path / "balwatch.yaml",
            state_dir=tmp_path / "state",
            rules=rules,
            accounts=accounts(6),
            interval="100ms",
        )
        coinw_sim = state.accounts["coinw-key-owner"]
        bitso_sim = state.accounts["bitso-key-owner"]
        with notify_socket() as (sock, path):
            async with (
                Notifications(sock) as notes,
                running(config, AlertLog(), Notifier(path)) as daemon,
            ):
                # 12 accounts want 120 requests/s on two keys; the limiters allow 4/s and 2/s.
                await state.requests("coinw-key-owner", 6)
                pollers = dict(daemon._scheduler._running)
                mark = len(notes.received)
                rules.write_text(many_rules(100))
                write_config(
                    config,
                    state_dir=tmp_path / "state",
                    rules=rules,
                    accounts=accounts(8),
                    interval="100ms",
                )
                daemon.request_reload()  # as SIGHUP does under `balwatch run`
                at, _ = await notes.wait_for(lambda n: n.get("RELOADING") == "1", after=mark)
                await notes.wait_for(lambda n: n.get("READY") == "1", after=at)
                assert {r.name for r in daemon.engine.rules} == {f"r{i}" for i in range(100, 140)}
                # The unchanged accounts kept their pollers (no burst, no reset backoff).
                now_running = daemon._scheduler._running
                assert len(now_running) == 16
                assert all(now_running[name][1] is task for name, (_, task) in pollers.items())
                after_reload = coinw_sim.requests
                await state.requests("coinw-key-owner", after_reload + 6)
                errors = {
                    (s.labels["account"], s.labels["kind"]): s.value
                    for metric in daemon.metrics.registry.collect()
                    if metric.name == "balwatch_poll_errors"
                    for s in metric.samples
                    if s.name.endswith("_total") and s.value
                }

    coinw_limit = CoinwAdapter.rate_limit
    bitso_limit = BitsoAdapter.rate_limit
    assert coinw_limit is not None and bitso_limit is not None
    for sim_account, limit in ((coinw_sim, coinw_limit), (bitso_sim, bitso_limit)):
        documented = sim_account.max_requests_in(limit.per_seconds)
        assert documented <= limit.requests, (
            f"{sim_account.exchange}: {documented} requests in {limit.per_seconds:g}s, "
            f"documented limit {limit.requests}"
        )
        # The daemon paces at 80% of the limit: one request per spacing, on average at
        # least that far apart at the densest stretch (a little latency jitter allowed).
        scaled = with_headroom(limit)
        assert sim_account.max_requests_in(scaled.per_seconds) <= scaled.requests + 1
        spacing = scaled.per_seconds / scaled.requests
        densest = paced(sim_account.request_times, spacing)
        assert densest >= spacing * 0.9, (
            f"{sim_account.exchange}: requests {densest:.3f}s apart at the densest, "
            f"paced limit is one per {spacing:.3f}s"
        )
        # Not vacuous: the limiter, not the poll interval, was the bottleneck.
        assert sim_account.requests >= 12, sim_account.requests
    assert coinw_sim.max_requests_in(2.0) <= 5
    assert not errors, f"polls failed (the simulator enforces CoinW's limit): {errors}"


async def test_a_loader_crash_on_reload_is_rejected_and_reloading_goes_on(
    tmp_path: Path, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception out of loading, not only a ConfigError, keeps the running set."""
    _, config, _ = await treasury_daemon_files(
        tmp_path, start_sim, "rules:\n  - {name: low, when: available < 5000}\n"
    )
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        real = balwatch.daemon.load_all

        def crash(*args: object) -> object:
            raise RuntimeError("a loader bug")

        monkeypatch.setattr(balwatch.daemon, "load_all", crash)
        assert await daemon.reload() is False
        error = await alerts.event("config_error", "balwatch", "firing")
        assert "RuntimeError" in error.summary and "last good rules" in error.summary
        assert [r.name for r in daemon.engine.rules] == ["low"]

        monkeypatch.setattr(balwatch.daemon, "load_all", real)
        assert await daemon.reload() is True
        await alerts.event("config_error", "balwatch", "resolved")


async def test_account_labels_follow_a_reload(tmp_path: Path, start_sim: StartSim) -> None:
    """Labels edited in the config reach the alerts after a reload, without a restart."""
    sim, config, rules = await treasury_daemon_files(
        tmp_path, start_sim, "rules:\n  - {name: low, when: available < 5000}\n"
    )
    labelled = bitso("treasury", sim.url).replace("}}\n", "}, labels: {desk: treasury}}\n")
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        write_config(config, state_dir=tmp_path / "state", rules=rules, accounts=labelled)
        assert await daemon.reload() is True
        set_fields(sim.state, "treasury", "USDT", available="3000")
        fired = await alerts.event("low", "treasury", "firing")
        assert fired.labels == {"desk": "treasury"}


class Reloads:
    """Every reload of the daemon, whatever starts it (a file change, SIGHUP), awaitable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._done = asyncio.Event()
        real = Daemon.reload

        async def reload(daemon: Daemon) -> bool:
            ok = await real(daemon)
            self._done.set()
            return ok

        monkeypatch.setattr(Daemon, "reload", reload)
        monkeypatch.setattr(balwatch.daemon, "WATCH_SECONDS", 0.02)  # look at files often

    async def next(self) -> None:
        await asyncio.wait_for(self._done.wait(), WAIT)
        self._done.clear()


async def test_a_rule_file_added_under_a_recursive_glob_is_loaded(
    tmp_path: Path, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher matches globs as the loader does: `**` included."""
    reloads = Reloads(monkeypatch)
    team = tmp_path / "rules" / "team"
    team.mkdir(parents=True)
    (team / "a.yaml").write_text("rules:\n  - {name: a, when: available < 1}\n")
    sim = await start_sim(bitso_account())
    config = write_config(
        tmp_path / "balwatch.yaml", state_dir=tmp_path / "state",
        rules=tmp_path / "rules" / "**" / "*.yaml", accounts=bitso("treasury", sim.url),
    )  # fmt: skip
    async with running(config, AlertLog()) as daemon:
        (tmp_path / "rules" / "b.yaml").write_text("rules:\n  - {name: b, when: available < 1}\n")
        await reloads.next()
        assert sorted(r.name for r in daemon.engine.rules) == ["a", "b"]


async def test_a_rule_edit_during_start_up_is_loaded(
    tmp_path: Path, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher compares with the files as start-up read them, not as they were later."""
    reloads = Reloads(monkeypatch)
    _, config, rules = await treasury_daemon_files(
        tmp_path, start_sim, "rules:\n  - {name: old, when: available < 1}\n"
    )
    daemon = Daemon(config, on_alerts=AlertLog(), notifier=Notifier(None), configure_logs=False)
    await daemon.start()
    # After the files were read, before the main loop (and its watcher) began.
    rules.write_text("rules:\n  - {name: new, when: available < 1}\n")
    serving = asyncio.create_task(daemon.serve())
    try:
        await reloads.next()
        assert [r.name for r in daemon.engine.rules] == ["new"]
    finally:
        daemon.stop()
        await asyncio.wait_for(serving, WAIT)
        await daemon.shutdown()


async def test_the_log_redactor_knows_the_credentials_from_start_and_after_a_reload(
    tmp_path: Path, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret of the config the daemon started with is masked, here inside base64; a
    key rotated by a reload is masked in log lines like the one it replaced."""
    rotated = "rotated-key-7f3e9a"
    sim, config, rules = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)  # where the daemon's own log set-up writes
    saved = structlog.get_config()
    daemon = Daemon(config, on_alerts=AlertLog(), notifier=Notifier(None))
    run = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), WAIT)
        basic = base64.b64encode(b"k-bitso:s-bitso").decode()
        structlog.get_logger("test").warning("echo", error=f"at start: Basic {basic}")
        accounts = bitso("treasury", sim.url, key=rotated)
        write_config(config, state_dir=tmp_path / "state", rules=rules, accounts=accounts)
        assert await daemon.reload() is True
        structlog.get_logger("test").warning("echo", error=f"server said: bad key {rotated}")
        daemon.stopping.set()
        assert await asyncio.wait_for(run, WAIT) == 0
    finally:
        structlog.configure(**saved)
    assert "server said: bad key ***" in out.getvalue()
    assert rotated not in out.getvalue()
    assert "at start: Basic ***" in out.getvalue()


async def test_a_rejected_reload_alerts_with_the_error_not_a_warning_beside_it(
    tmp_path: Path, start_sim: StartSim
) -> None:
    warned = "rules:\n  - {name: w, when: available < 1, select: {accounts: [nobody]}}\n"
    _, config, rules = await treasury_daemon_files(tmp_path, start_sim, warned)
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        rules.write_text(warned + "  - {name: e, when: available < 1, whn: typo}\n")
        assert await daemon.reload() is False
        error = await alerts.event("config_error", "balwatch", "firing")
        assert error.summary.endswith(f"{rules}:3:36: unknown key"), error.summary


# --- hostile files and a starved process (issue 12, items 1, 4 and 8) -----------------


async def test_a_reload_alert_names_place_and_kind_never_the_files_text(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """A rule glob that matches any file (here one like /etc/shadow): the alert goes to every
    sink, so it says where and what sort of problem, not what the file holds."""
    _, config, rules = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    shadow = tmp_path / "shadow"
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        shadow.write_text("root:SECRET-hash-$6$salt$7f3e9a:19000:0:99999:7:::\n")
        config.write_text(config.read_text().replace(f"['{rules}']", f"['{rules}', '{shadow}']"))
        assert await daemon.reload() is False
        error = await alerts.event("config_error", "balwatch", "firing")
    assert error.summary == (
        f"config reload rejected, the last good rules keep running: {shadow}:1:1: not a rule file"
    )
    assert "SECRET" not in json.dumps(error.to_json())


async def test_an_alias_bomb_on_reload_is_rejected_and_the_rules_keep_running(
    tmp_path: Path, start_sim: StartSim
) -> None:
    good = "rules:\n  - {name: low, when: available < 1}\n"
    _, config, _ = await treasury_daemon_files(tmp_path, start_sim, good)
    levels = ['  x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"  x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        # Anywhere in the file: the loader refuses it before the data is looked at.
        config.write_text(config.read_text() + "bomb:\n" + "\n".join(levels) + "\n")
        assert await asyncio.wait_for(daemon.reload(), WAIT) is False
        error = await alerts.event("config_error", "balwatch", "firing")
        assert error.summary.endswith(": alias bomb"), error.summary
        assert [r.name for r in daemon.engine.rules] == ["low"]


def lowest_free_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


async def test_out_of_descriptors_a_reload_waits_instead_of_raising_config_error(
    tmp_path: Path, start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection flood or a leak can use up the process's descriptors: reading the
    config fails then, but the config is fine. No config_error; tried again later."""
    _, config, _ = await treasury_daemon_files(
        tmp_path, start_sim, "rules:\n  - {name: low, when: available < 1}\n"
    )
    reloads = Reloads(monkeypatch)
    monkeypatch.setattr(balwatch.daemon, "WATCH_SECONDS", 0.05)  # the retry comes soon
    alerts = AlertLog()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with running(config, alerts) as daemon:
        with capture_logs() as logs:
            # No descriptor below the limit is free: every open fails with EMFILE, as in
            # the flood (the kernel's own error, not an imitation).
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_descriptor(), limits[1]))
            try:
                reloaded = await daemon.reload()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            assert reloaded is False
            await reloads.next()  # the retry, with descriptors to spare again
        assert [r.name for r in daemon.engine.rules] == ["low"]
    assert not [a for a in alerts.alerts if a.rule == "config_error"]
    deferred = [e for e in logs if e["event"] == "config_read_deferred"]
    assert len(deferred) == 1 and deferred[0]["error"] == "Too many open files"
    assert not [e for e in logs if e["event"] in ("reload_rejected", "reload_failed")]


async def test_risky_settings_are_logged_when_the_daemon_starts(
    tmp_path: Path, start_sim: StartSim
) -> None:
    _, config, _ = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    config.write_text(
        config.read_text()
        + "sinks:\n  - {name: hook, type: webhook, url: 'https://hooks.example/x',"
        " verify_tls: false}\n"
    )
    with capture_logs() as logs:
        async with running(config, AlertLog()):
            pass
    warned = [e["problem"] for e in logs if e["event"] == "config_warning"]
    assert any(f"{config}:8:77: warning: verify_tls: false" in p for p in warned), warned


async def test_a_self_alert_survives_a_restart_firing_once_and_resolving_once(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """source_auth_failed is saved with the alerts: a restart with the key still wrong does
    not page again, and one with the key fixed sends the resolve."""
    sim, config, rules = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")

    def with_key(key: str) -> None:
        accounts = bitso("treasury", sim.url, key=key)
        write_config(config, state_dir=tmp_path / "state", rules=rules, accounts=accounts)

    with_key("wrong-key")
    first = AlertLog()
    async with running(config, first):
        await first.event("source_auth_failed", "treasury", "firing")
    again = AlertLog()
    async with running(config, again):  # ready: the first poll round was handled
        assert [(a.rule, a.event) for a in again.alerts] == []
    with_key("k-bitso")
    fixed = AlertLog()
    async with running(config, fixed):
        resolved = await fixed.event("source_auth_failed", "treasury", "resolved")
    assert (
        resolved.fingerprint
        == (await first.event("source_auth_failed", "treasury", "firing")).fingerprint
    )


async def test_removing_an_account_resolves_its_self_alert(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim, config, rules = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    other = bitso("other", sim.url)
    write_config(
        config, state_dir=tmp_path / "state", rules=rules,
        accounts=bitso("treasury", sim.url, key="wrong-key") + other,
    )  # fmt: skip
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        await alerts.event("source_auth_failed", "treasury", "firing")
        write_config(config, state_dir=tmp_path / "state", rules=rules, accounts=other)
        assert await daemon.reload() is True
        await alerts.event("source_auth_failed", "treasury", "resolved")


async def test_a_second_daemon_on_the_same_state_directory_is_refused(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """Two would deliver the same outbox twice and overwrite each other's alert states."""
    _, config, _ = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    async with running(config, AlertLog()):
        second = Daemon(config, on_alerts=AlertLog(), configure_logs=False)
        with pytest.raises(StateError, match="another balwatch is running"):
            await asyncio.wait_for(second.run(), WAIT)
    # The lock went with the first daemon: the state directory is free again.
    async with running(config, AlertLog()):
        pass


# --- MQTT topics: one active/ topic per venue, and the upgrade from the old layout -------

LOW_BTC_RULES = """\
rules:
  - name: low-btc
    select: {assets: [BTC]}
    when: available < 1
    for: 0s
"""


async def test_two_venues_of_one_coinapi_account_keep_their_own_retained_alert(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """BTC low on BINANCESPOT and on KRAKEN: resolving one leaves the other retained."""
    ems = SimAccount(
        "ems",
        "coinapi",
        api_key="k-coinapi",
        balances={
            venue: {"BTC": {"total": "0.5", "available": "0.5", "locked": "0"}}
            for venue in ("BINANCESPOT", "KRAKEN")
        },
    )
    sim = await start_sim(ems)
    rules = tmp_path / "rules.yaml"
    rules.write_text(LOW_BTC_RULES)
    async with Mosquitto() as broker:
        config = write_config(
            tmp_path / "balwatch.yaml",
            state_dir=tmp_path / "state",
            rules=rules,
            accounts=(
                f"  - {{name: ems, exchange: coinapi, base_url: '{sim.url}', "
                "credentials: {api_key: k-coinapi}}\n"
            ),
            sinks=f"  - {{name: ops-mqtt, type: mqtt, url: '{broker.url}'}}\n",
        )
        alerts = AlertLog()
        async with running(config, alerts) as daemon:
            await alerts.event("low-btc", "ems", "firing")
            await alerts.wait_for(lambda a: a.venue == "KRAKEN" and a.event == "firing")
            ems.balances["BINANCESPOT"]["BTC"].update(total="2", available="2")
            resolved = await alerts.event("low-btc", "ems", "resolved")
            assert resolved.venue == "BINANCESPOT"
            await daemon.outbox.wait_settled()
            async with subscribe(broker.port, ["balwatch/active/#"]) as late:
                retained = await late.drain()
    assert [(m.topic.value, json.loads(body(m))["venue"]) for m in retained] == [
        ("balwatch/active/low-btc/ems/KRAKEN/BTC", "KRAKEN")
    ]


UPGRADE_RULES = """\
rules:
  - name: low-available
    when: available < 5000
    for: 0s
"""


def body(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes)
    return message.payload


def old_state_database(db: Path) -> None:
    """The state database as the balwatch before the venue segment left it: its tables (the
    first two engine steps, no marker), a firing rule alert and a firing self-alert, both
    saved without the keys added since (summary and description; instance and url)."""
    conn = open_db(db)
    try:
        migrate(conn, "engine", ENGINE_SCHEMA[:2])
        state = AlertState(
            fingerprint=fingerprint_of("low-available", "treasury", "bitso", "USDT"),
            rule="low-available",
            when="available < 5000",
            clear=None,
            severity="warning",
            account="treasury",
            exchange="bitso",
            venue="bitso",
            asset="USDT",
            phase="firing",
            since=time.time() - 3600,
            last_notified=time.time() - 3600,
            values={"available": Decimal(3000)},
        ).to_json()
        del state["summary"], state["description"]
        conn.execute(
            "INSERT INTO engine_alert VALUES (?, ?, ?)",
            (state["fingerprint"], state["rule"], json.dumps(state)),
        )
        conn.execute(
            "INSERT INTO self_alert VALUES (?, ?)",
            (AUTH_FAILED["fingerprint"], json.dumps(AUTH_FAILED)),
        )
    finally:
        conn.close()


AUTH_FAILED = {
    "version": 1,
    "id": "f00d",
    "fingerprint": fingerprint_of("source_auth_failed", "broken", None, None),
    "status": "firing",
    "event": "firing",
    "rule": "source_auth_failed",
    "severity": "critical",
    "account": "broken",
    "exchange": "bitso",
    "venue": None,
    "asset": None,
    "summary": "broken: bitso rejected the credentials; polling backs off",
    "description": "",
    "labels": {"source": "balwatch"},
    "expression": "",
    "values": {},
    "started_at": "2026-01-01T00:00:00Z",
    "resolved_at": None,
    "observed_at": "2026-01-01T00:00:00Z",
}
OLD_TOPICS = {
    "balwatch/active/low-available/treasury/USDT": {"rule": "low-available"},
    "balwatch/active/source_auth_failed/broken/-": AUTH_FAILED,
}


async def test_the_first_start_after_the_upgrade_moves_retained_alerts_and_pages_nobody(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(bitso_account(available="3000"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(UPGRADE_RULES)
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "balwatch.db"
    old_state_database(db)
    async with Mosquitto() as broker, WebhookReceiver() as hook:
        async with aiomqtt.Client("127.0.0.1", broker.port) as old_daemon:
            for topic, doc in OLD_TOPICS.items():
                await old_daemon.publish(topic, json.dumps(doc), qos=1, retain=True)
        config = write_config(
            tmp_path / "balwatch.yaml",
            state_dir=tmp_path / "state",
            rules=rules,
            accounts=bitso("treasury", sim.url) + bitso("broken", sim.url, key="wrong-key"),
            sinks=(
                f"  - {{name: ops-mqtt, type: mqtt, url: '{broker.url}'}}\n"
                f"  - {{name: ops-hook, type: webhook, url: '{hook.url}'}}\n"
            ),
        )
        config.write_text(config.read_text() + "instance: upgraded-host\n")

        async def start(alerts: AlertLog) -> list[aiomqtt.Message]:
            """One run until everything it sent was acknowledged; what a subscriber saw."""
            async with subscribe(broker.port, ["balwatch/alerts/#", "balwatch/active/#"]) as sub:
                await sub.drain()  # the retained messages of before
                async with running(config, alerts) as daemon:
                    await daemon.outbox.wait_settled()
                    return await sub.drain()

        first = AlertLog()
        live = await start(first)
        async with subscribe(broker.port, ["balwatch/active/#"]) as late:
            retained = {m.topic.value: json.loads(body(m)) for m in await late.drain()}
        # Old topics cleared, each alert retained on its new topic, no event on alerts/.
        assert sorted((m.topic.value, bool(m.payload)) for m in live) == [
            ("balwatch/active/low-available/treasury/USDT", False),
            ("balwatch/active/low-available/treasury/bitso/USDT", True),
            ("balwatch/active/source_auth_failed/broken/-", False),
            ("balwatch/active/source_auth_failed/broken/-/-", True),
        ]
        assert first.alerts == [] and hook.requests == [], "nobody is paged again"
        low = retained.pop("balwatch/active/low-available/treasury/bitso/USDT")
        auth = retained.pop("balwatch/active/source_auth_failed/broken/-/-")
        assert retained == {}
        assert (low["event"], low["summary"], low["instance"]) == (
            "firing",
            "low-available treasury bitso/USDT: available=3000",
            "upgraded-host",
        )
        # balwatch's own alert moves as it was sent (same id), now with its instance.
        assert auth == {**AUTH_FAILED, "instance": "upgraded-host", "url": None, "group": None}
        for doc in (low, auth):
            assert schema_errors(doc) == [], doc
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT name, version FROM state_marker").fetchall() == [
                ("mqtt_topic_layout", 2)
            ]

        # Done once: the next start moves nothing and pages nobody.
        second = AlertLog()
        assert await start(second) == []
        assert second.alerts == [] and hook.requests == []


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def test_a_start_up_error_leaves_no_signal_handler_and_nothing_held(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """`balwatch run` maps the signals to the daemon only while it runs (capture_signals);
    a start that fails late (the state open, the sinks connected) leaves the process as
    it found it: its own handlers back, the state directory free."""
    _, config, _ = await treasury_daemon_files(tmp_path, start_sim, "rules: []\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with config.open("a") as f:
            f.write(f"http: {{listen: '127.0.0.1:{port}'}}\n")
        before = {sig: signal.getsignal(sig) for sig in SIGNALS}
        daemon = Daemon(config, on_alerts=AlertLog(), configure_logs=False)
        with (
            pytest.raises(StartError, match=f"http.listen 127.0.0.1:{port}"),
            capture_signals(daemon),
        ):
            await daemon.run()
    loop = asyncio.get_running_loop()
    assert [sig for sig in SIGNALS if loop.remove_signal_handler(sig)] == []
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before
    config.write_text(config.read_text().replace(f"http: {{listen: '127.0.0.1:{port}'}}\n", ""))
    async with running(config, AlertLog()):  # the state directory was let go
        pass
