"""End to end: ``balwatch run`` as a subprocess against the simulators, a real Mosquitto and a
real webhook receiver, driven through the simulator's control API (issue 5, "Done when").

Nothing here sleeps to wait for a result: every step waits for the thing it expects (an MQTT
message, a webhook request, an sd_notify datagram, the process's exit) with a timeout. Poll
intervals and rule windows are shortened so the whole story plays out in about half a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from balwatch.simulator.scenario import load_scenario
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import SimAccount
from balwatch.state.sqlite import LOCK_FILE
from tests.alertschema import schema_errors
from tests.brokers import Mosquitto, Subscriber, free_port, subscribe
from tests.commands import balwatch_run
from tests.conftest import StartSim
from tests.notify import Notifications, notify_socket
from tests.webhooks import Recorded, WebhookReceiver

STEP_TIMEOUT = 20.0  # one story step: a poll (0.3 s), a rule's `for`, a delivery

# The simulator's credentials reach the daemon only through ${ENV} references in the config:
# none of these may ever appear in what the daemon prints.
CREDENTIAL_ENV = {
    "BW_BITSO_KEY": "sim-bitso-key",
    "BW_BITSO_SECRET": "sim-bitso-secret",
    "BW_COINAPI_KEY": "sim-coinapi-key",
    "BW_KUNA_MERCHANT": "sim-merchant",
    "BW_KUNA_LOGIN": "treasury@example.com",
    "BW_KUNA_PASSWORD": "sim-kuna-password",
    "BW_COINW_KEY": "sim-coinw-key",
    "BW_COINW_SECRET": "sim-coinw-secret",
    "BW_HOOK_SECRET": "hook-hmac-secret-4f1c9e",
}

# The demo's rules (balwatch/demo/rules.yaml) with windows and delays shortened further, and
# sudden-drop limited to coinapi so that draining bitso's USDT does not also trip it (the
# story expects each alert exactly); and a portfolio rule over the USDT of every account
# (24000 + 149000 + 88000 + 12000 = 273000 at the start).
RULES = """\
defaults:
  severity: warning
  for: 500ms

rules:
  - name: low-available
    select: {assets: [USDT, MXN]}
    when: available < 5000
    clear: available >= 6000
    severity: critical
    summary: "{account} {asset}: only {available} available"

  - name: large-pending-withdrawal
    when: pending_withdrawal > 0.25 * total
    summary: "{account} {asset}: {pending_withdrawal} of {total} is leaving"

  - name: aml-lock
    when: aml_locked > 0
    for: 0s
    severity: critical
    summary: "{account} {asset}: {aml_locked} blocked by AML checks"

  - name: sudden-drop
    select: {exchanges: [coinapi]}
    when: pct_change(total, 2s) <= -20
    for: 0s
    severity: critical
    summary: "{account} {venue} {asset}: total fell sharply ({values})"

  - name: account-stale
    when: age > 3s
    for: 0s
    summary: "{account}: no good poll for {age} ({failures} failures in a row)"

  - name: usdt-across
    select: {assets: [USDT]}
    group_by: [asset]
    when: sum(available) < 260000
    clear: sum(available) >= 270000
    summary: "{asset} across the wallets: {values}"
"""

BROKEN_RULES = (
    RULES
    + """
  - name: broken
    when: available <<< 5
"""
)

NEW_RULE = """
  - name: dust-btc
    select: {assets: [BTC]}
    when: available < 0.01
    for: 0s
    summary: "{account}: only {available} BTC"
"""


def demo_accounts() -> list[SimAccount]:
    """The accounts of the demo scenario, fresh for each test."""
    path = Path(str(resources.files("balwatch.demo").joinpath("scenario.yaml")))
    return [account.build() for account in load_scenario(path).accounts]


def accounts_yaml(sim_url: str) -> str:
    """The demo's four accounts, every credential an ${ENV} reference."""
    return f"""\
accounts:
  - name: bitso-treasury
    exchange: bitso
    base_url: {sim_url}
    credentials: {{api_key: "${{BW_BITSO_KEY}}", api_secret: "${{BW_BITSO_SECRET}}"}}
    labels: {{desk: treasury}}
  - name: coinapi-ems
    exchange: coinapi
    base_url: {sim_url}
    credentials: {{api_key: "${{BW_COINAPI_KEY}}"}}
  - name: kuna-custody
    exchange: kunacore
    base_url: {sim_url}
    credentials:
      merchant_id: "${{BW_KUNA_MERCHANT}}"
      login: "${{BW_KUNA_LOGIN}}"
      password: "${{BW_KUNA_PASSWORD}}"
  - name: coinw-spot
    exchange: coinw
    base_url: {sim_url}
    credentials: {{api_key: "${{BW_COINW_KEY}}", api_secret: "${{BW_COINW_SECRET}}"}}
"""


# --- MQTT and webhook observers --------------------------------------------------------


# The venue of each account's alerts in the story (CoinAPI's BTC is on BINANCESPOT).
VENUES = {
    "bitso-treasury": "bitso",
    "coinapi-ems": "BINANCESPOT",
    "kuna-custody": "kunacore",
    "coinw-spot": "coinw",
}


def topic_tail(rule: str, account: str | None, asset: str | None) -> str:
    """``<rule>/<account>/<venue>/<asset>``; ``-`` for venue and asset at account scope, and
    for account and venue of a group by asset (account None)."""
    if account is None:
        return f"{rule}/-/-/{asset or '-'}"
    venue = "-" if asset is None else VENUES[account]
    return f"{rule}/{account}/{venue}/{asset or '-'}"


@dataclass
class MqttLog:
    """Every message a ``balwatch/#`` subscriber got, and waits for the next alert of a kind."""

    subscriber: Subscriber
    port: int
    seen: list[aiomqtt.Message] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)

    @staticmethod
    def doc(message: aiomqtt.Message) -> dict[str, Any]:
        assert isinstance(message.payload, bytes)
        data: dict[str, Any] = json.loads(message.payload)
        return data

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert document received on ``balwatch/alerts/...``, in arrival order."""
        return [self.doc(m) for m in self.seen if m.topic.value.startswith("balwatch/alerts/")]

    async def until(self, match: Callable[[aiomqtt.Message], bool]) -> aiomqtt.Message:
        async with asyncio.timeout(STEP_TIMEOUT):
            index = 0
            while True:
                while index < len(self.seen):
                    if match(self.seen[index]):
                        return self.seen[index]
                    index += 1
                self.seen.append(await self.subscriber.get(timeout=STEP_TIMEOUT))

    async def alert(
        self, rule: str, account: str | None, asset: str | None, event: str
    ) -> dict[str, Any]:
        """The next not-yet-taken ``event`` of this alert on its ``alerts/`` topic."""
        topic = f"balwatch/alerts/{topic_tail(rule, account, asset)}"

        def match(m: aiomqtt.Message) -> bool:
            if m.topic.value != topic:
                return False
            doc = self.doc(m)
            return doc["event"] == event and doc["id"] not in self.taken

        try:
            message = await self.until(match)
        except TimeoutError:
            got = [
                (m.topic.value, self.doc(m)["event"])
                for m in self.seen
                if "alerts/" in str(m.topic)
            ]
            raise AssertionError(
                f"no {event} on {topic} within {STEP_TIMEOUT}s; got {got}"
            ) from None
        doc = self.doc(message)
        self.taken.add(doc["id"])
        return doc

    async def active_update(
        self, rule: str, account: str | None, asset: str | None, payload: bytes
    ) -> None:
        """Wait until the ``active/`` topic was published with ``payload`` (b"" = cleared)."""
        topic = f"balwatch/active/{topic_tail(rule, account, asset)}"
        await self.until(lambda m: m.topic.value == topic and m.payload == payload)

    async def retained(
        self, rule: str, account: str | None, asset: str | None
    ) -> list[aiomqtt.Message]:
        """What a subscriber that connects now gets on the alert's ``active/`` topic."""
        topic = f"balwatch/active/{topic_tail(rule, account, asset)}"
        async with subscribe(self.port, [topic]) as fresh:
            return await fresh.drain()


async def hook_request(hook: WebhookReceiver, alert_id: str) -> Recorded:
    """The webhook request that carried ``alert_id``; waits for it to arrive."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            for request in hook.requests:
                if request.json().get("id") == alert_id:
                    return request
            await hook.wait_for(len(hook.requests) + 1, timeout=STEP_TIMEOUT)


# --- simulator control API -------------------------------------------------------------


@dataclass
class SimControl:
    """The simulator's /_sim/ API over HTTP, as an operator's script would use it."""

    http: aiohttp.ClientSession
    url: str

    async def set_fields(self, account: str, asset: str, **fields: str) -> None:
        """Change some fields of one asset (PATCH replaces an asset's fields: merge first)."""
        async with self.http.get(f"{self.url}/_sim/accounts/{account}") as response:
            response.raise_for_status()
            described = await response.json()
        venue, current = next(
            (v, assets[asset]) for v, assets in described["balances"].items() if asset in assets
        )
        body = {"venue": venue, "balances": {asset: {**current, **fields}}}
        async with self.http.patch(
            f"{self.url}/_sim/accounts/{account}/balances", json=body
        ) as response:
            response.raise_for_status()

    async def down(self, account: str) -> None:
        body = {"kind": "status", "status": 503, "times": None}
        async with self.http.post(f"{self.url}/_sim/accounts/{account}/faults", json=body) as r:
            r.raise_for_status()

    async def up(self, account: str) -> None:
        async with self.http.delete(f"{self.url}/_sim/accounts/{account}/faults") as r:
            r.raise_for_status()


def pending_deliveries(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT id, sink, status, attempts, last_error FROM outbox_delivery"
        ).fetchall()
    finally:
        conn.close()


def signature_ok(request: Recorded) -> bool:
    """docs/alerts.md: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    fields = dict(part.split("=", 1) for part in request.headers["X-Balwatch-Signature"].split(","))
    secret = CREDENTIAL_ENV["BW_HOOK_SECRET"].encode()
    mac = hmac.new(secret, fields["t"].encode() + b"." + request.body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


# --- the story -------------------------------------------------------------------------


async def test_balwatch_run_end_to_end(
    tmp_path: Path, start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim: Simulator = await start_sim(*demo_accounts())
    control = SimControl(http, sim.url)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules_file = rules_dir / "demo.yaml"
    rules_file.write_text(RULES)
    state_dir = tmp_path / "state"
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"

    async with (
        Mosquitto() as broker,
        WebhookReceiver() as hook,
        subscribe(broker.port, ["balwatch/#"]) as subscriber,
    ):
        config = tmp_path / "balwatch.yaml"
        config.write_text(
            "\n".join(
                [
                    f"state_dir: {state_dir}",
                    "instance: e2e-treasury",
                    f"external_url: {api}/",
                    f"rules: ['{rules_dir}/*.yaml']",
                    f"http: {{listen: '127.0.0.1:{api_port}'}}",
                    "log: {format: json, level: info}",
                    "defaults: {poll_interval: 300ms, timeout: 2s}",
                    "sinks:",
                    f"  - {{name: ops-mqtt, type: mqtt, url: '{broker.url}'}}",
                    f"  - {{name: ops-hook, type: webhook, url: '{hook.url}',"
                    " secret: '${BW_HOOK_SECRET}'}",
                    accounts_yaml(sim.url),
                ]
            )
        )
        mqtt = MqttLog(subscriber, broker.port)
        with notify_socket() as (sock, notify_path):
            env = {**CREDENTIAL_ENV, "NOTIFY_SOCKET": notify_path}
            async with Notifications(sock) as notes, balwatch_run(config, env) as daemon:
                # READY=1 once the first poll round is done and the sinks are connected.
                try:
                    _, ready = await notes.wait_for(lambda n: n.get("READY") == "1")
                except TimeoutError:
                    raise AssertionError(f"no READY=1; output:\n{daemon.output}") from None
                assert re.fullmatch(
                    r"4/4 accounts ok, 0 failing, 0 alerts firing", ready.get("STATUS", "")
                ), ready
                assert await get(http, f"{api}/healthz") == (200, "ok")
                status, body = await get(http, f"{api}/readyz")
                assert status == 200 and json.loads(body)["ready"] is True, body

                async def fires(
                    rule: str, account: str | None, asset: str | None, *, follow: bool = True
                ) -> dict[str, Any]:
                    doc = await mqtt.alert(rule, account, asset, "firing")
                    request = await hook_request(hook, doc["id"])
                    assert request.json() == doc, "MQTT and webhook carry the same document"
                    assert request.headers["Idempotency-Key"] == doc["id"]
                    assert signature_ok(request), request.headers.get("X-Balwatch-Signature")
                    # The retained active/ topic holds this very alert for late subscribers.
                    await mqtt_active_set(mqtt, rule, account, asset, doc["id"])
                    # A bot places it: which installation, and a link to its state.
                    assert doc["instance"] == "e2e-treasury", doc
                    assert doc["url"] == f"{api}/api/alerts/{doc['fingerprint']}", doc
                    if follow:  # (not for an alert that may already have resolved)
                        status, body = await get(http, doc["url"])
                        assert status == 200, body
                        state = json.loads(body)
                        assert (state["fingerprint"], state["phase"]) == (
                            doc["fingerprint"],
                            "firing",
                        )
                    return doc

                async def resolves(fired: dict[str, Any]) -> dict[str, Any]:
                    rule, account, asset = fired["rule"], fired["account"], fired["asset"]
                    doc = await mqtt.alert(rule, account, asset, "resolved")
                    assert doc["status"] == "resolved" and doc["resolved_at"], doc
                    # It says what people saw when it fired; values say how it ended.
                    assert (doc["summary"], doc["description"]) == (
                        fired["summary"],
                        fired["description"],
                    )
                    request = await hook_request(hook, doc["id"])
                    assert request.json() == doc
                    await mqtt.active_update(rule, account, asset, b"")
                    assert await mqtt.retained(rule, account, asset) == [], (
                        f"active/{topic_tail(rule, account, asset)} still retained after resolve"
                    )
                    status, body = await get(http, doc["url"])
                    assert status == 404 and json.loads(body)["fingerprint"] == doc["fingerprint"]
                    return doc

                # 1. bitso-treasury spends USDT down to 3,000.
                await control.set_fields(
                    "bitso-treasury", "USDT", total="4000.00", available="3000.00"
                )
                low = await fires("low-available", "bitso-treasury", "USDT")
                assert low["severity"] == "critical" and low["values"] == {"available": "3000.00"}
                assert low["labels"].get("desk") == "treasury", low
                # ... and the USDT of all the wallets, 252,000, is below the floor.
                usdt = await fires("usdt-across", None, "USDT")
                assert (usdt["group"], usdt["exchange"], usdt["venue"]) == (
                    {"asset": "USDT"},
                    None,
                    None,
                )
                assert usdt["values"]["sum(available)"] == "252000.00", usdt
                # 2. a 150,000 MXN withdrawal is queued.
                await control.set_fields("bitso-treasury", "MXN", pending_withdrawal="150000.00")
                withdrawal = await fires("large-pending-withdrawal", "bitso-treasury", "MXN")
                # 3. 2,500 USDT frozen by an AML check.
                await control.set_fields("kuna-custody", "USDT", aml_locked="2500.00")
                aml = await fires("aml-lock", "kuna-custody", "USDT")
                # 4. 40% of the BTC on BINANCESPOT vanishes; the drop leaves the 2 s window.
                await control.set_fields("coinapi-ems", "BTC", total="2.1", available="1.7")
                drop = await fires("sudden-drop", "coinapi-ems", "BTC", follow=False)
                assert drop["venue"] == "BINANCESPOT", drop
                drop_resolved = await resolves(drop)
                assert drop_resolved["values"] != drop["values"], "values are of the resolve"
                # 5. coinw stops answering.
                await control.down("coinw-spot")
                stale = await fires("account-stale", "coinw-spot", None)
                assert stale["asset"] is None and stale["exchange"] == "coinw", stale

                # The HTTP API while all this is firing.
                status, body = await get(http, f"{api}/api/alerts")
                assert status == 200
                firing = {(a["rule"], a["account"]) for a in json.loads(body)}
                assert {
                    ("usdt-across", None),  # coinw-spot's poll fails: no data, still firing
                    ("low-available", "bitso-treasury"),
                    ("large-pending-withdrawal", "bitso-treasury"),
                    ("aml-lock", "kuna-custody"),
                    ("account-stale", "coinw-spot"),
                } <= firing, body
                status, body = await get(http, f"{api}/metrics")
                assert status == 200 and "balwatch_polls_total" in body, body[:500]
                assert 'balwatch_polls_total{account="coinw-spot",exchange="coinw"}' in body
                status, body = await get(http, f"{api}/api/balances")
                assert status == 200 and "bitso-treasury" in body, body[:500]
                # systemd's STATUS= line follows what is firing (sent by the 1 s tick).
                await notes.wait_for(lambda n: "5 alerts firing" in n.get("STATUS", ""))

                # 6. everything recovers.
                await control.set_fields(
                    "bitso-treasury", "USDT", total="25000.00", available="24000.00"
                )
                await control.set_fields("bitso-treasury", "MXN", pending_withdrawal="0")
                await control.set_fields("kuna-custody", "USDT", aml_locked="0")
                await control.up("coinw-spot")
                await resolves(low)
                await resolves(withdrawal)
                await resolves(aml)
                await resolves(stale)
                await resolves(usdt)  # once coinw-spot answers again: 273,000

                # A broken rule file and SIGHUP: rejected, config_error, old rules keep working.
                seen_notes = len(notes.received)
                rules_file.write_text(BROKEN_RULES)
                daemon.signal(signal.SIGHUP)
                reloading_at, reloading = await notes.wait_for(
                    lambda n: n.get("RELOADING") == "1", after=seen_notes
                )
                assert int(reloading["MONOTONIC_USEC"]) > 0
                await notes.wait_for(lambda n: n.get("READY") == "1", after=reloading_at)
                error = await fires("config_error", "balwatch", None)
                assert error["severity"] == "critical" and "rejected" in error["summary"], error
                # file:line:col of the problem (relative to the daemon's working directory).
                assert "rules/demo.yaml:43:" in error["summary"], error["summary"]
                await control.set_fields(
                    "bitso-treasury", "USDT", total="4000.00", available="3000.00"
                )
                low = await fires("low-available", "bitso-treasury", "USDT")
                usdt = await fires("usdt-across", None, "USDT")
                await control.set_fields(
                    "bitso-treasury", "USDT", total="25000.00", available="24000.00"
                )
                await resolves(low)
                await resolves(usdt)

                # A good rule file with a new rule, picked up by the file watcher (no SIGHUP).
                rules_file.write_text(RULES + NEW_RULE)
                await fires("dust-btc", "coinw-spot", "BTC")
                await resolves(error)

                # SIGTERM: exit 0 with the outbox drained.
                daemon.signal(signal.SIGTERM)
                code = await daemon.wait()
                assert code == 0, f"exit code {code}; output:\n{daemon.output[-4000:]}"
                await notes.wait_for(lambda n: n.get("STOPPING") == "1")

        # Everything the daemon sent over MQTT, and nothing else, reached the webhook too.
        mqtt.seen.extend(await subscriber.drain())
        alerts = mqtt.alerts()
        expected = [
            ("low-available", "bitso-treasury", "USDT", "firing"),
            ("usdt-across", None, "USDT", "firing"),
            ("large-pending-withdrawal", "bitso-treasury", "MXN", "firing"),
            ("aml-lock", "kuna-custody", "USDT", "firing"),
            ("sudden-drop", "coinapi-ems", "BTC", "firing"),
            ("sudden-drop", "coinapi-ems", "BTC", "resolved"),
            ("account-stale", "coinw-spot", None, "firing"),
            ("low-available", "bitso-treasury", "USDT", "resolved"),
            ("large-pending-withdrawal", "bitso-treasury", "MXN", "resolved"),
            ("aml-lock", "kuna-custody", "USDT", "resolved"),
            ("account-stale", "coinw-spot", None, "resolved"),
            ("usdt-across", None, "USDT", "resolved"),
            ("config_error", "balwatch", None, "firing"),
            ("low-available", "bitso-treasury", "USDT", "firing"),
            ("usdt-across", None, "USDT", "firing"),
            ("low-available", "bitso-treasury", "USDT", "resolved"),
            ("usdt-across", None, "USDT", "resolved"),
            ("dust-btc", "coinw-spot", "BTC", "firing"),
            ("config_error", "balwatch", None, "resolved"),
        ]
        # Delivery is at least once: a repeated id must repeat the same document.
        by_id: dict[str, dict[str, Any]] = {}
        retained = [MqttLog.doc(m) for m in mqtt.seen if "/active/" in m.topic.value and m.payload]
        for doc in [*alerts, *(r.json() for r in hook.requests), *retained]:
            assert by_id.setdefault(doc["id"], doc) == doc, f"two documents with one id: {doc}"
            # Every document the daemon sent is what `balwatch schema --alert` describes.
            assert schema_errors(doc) == [], f"{doc}: {schema_errors(doc)}"
        got = sorted(
            (a["rule"], a["account"], a["asset"] or "", a["event"])
            for a in {a["id"]: a for a in alerts}.values()
        )
        want = sorted((r, acct, asset or "", event) for r, acct, asset, event in expected)
        assert got == want, f"unexpected alert set:\n got {got}\nwant {want}"
        hook_ids = {r.json()["id"] for r in hook.requests}
        assert hook_ids == {a["id"] for a in alerts}, "the webhook got the same ids as MQTT"

    leftover = pending_deliveries(state_dir / "balwatch.db")
    assert leftover == [], f"outbox not drained at exit: {leftover}"
    output = daemon.output
    assert '"event": "alert"' in output, f"JSON log lines with each alert:\n{output[:2000]}"
    for name, secret in CREDENTIAL_ENV.items():
        assert secret not in output, f"{name}'s value appears in balwatch's output"


async def mqtt_active_set(
    mqtt: MqttLog, rule: str, account: str, asset: str | None, alert_id: str
) -> None:
    """The active/ topic was published with this alert, and a late subscriber gets it."""
    topic = f"balwatch/active/{topic_tail(rule, account, asset)}"

    def is_this(m: aiomqtt.Message) -> bool:
        return (
            m.topic.value == topic
            and isinstance(m.payload, bytes)
            and bool(m.payload)
            and MqttLog.doc(m)["id"] == alert_id
        )

    await mqtt.until(is_this)
    retained = await mqtt.retained(rule, account, asset)
    assert len(retained) == 1 and retained[0].retain, f"{topic}: {retained}"
    assert MqttLog.doc(retained[0])["id"] == alert_id


# --- a state database balwatch cannot use ----------------------------------------------


def _random_bytes(size: int) -> bytes:
    return random.Random(5).randbytes(size)


def _foreign_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, amount TEXT)")
    conn.execute("INSERT INTO invoices (customer, amount) VALUES ('acme', '12.50')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
async def test_unusable_state_db_exits_1_and_keeps_the_file(tmp_path: Path, kind: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = state_dir / "balwatch.db"
    if kind == "corrupt":
        db.write_bytes(_random_bytes(16384))
    else:
        _foreign_db(db)
    before = db.read_bytes()
    files_before = sorted(p.name for p in state_dir.iterdir())
    (tmp_path / "rules.yaml").write_text(RULES)
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        f"state_dir: {state_dir}\n"
        f"rules: ['{tmp_path}/rules.yaml']\n"
        "log: {format: json, level: info}\n" + accounts_yaml("http://127.0.0.1:9")
    )
    async with balwatch_run(config, CREDENTIAL_ENV) as daemon:
        code = await daemon.wait()
    stderr = bytes(daemon.stderr).decode()
    assert code == 1, f"exit {code}; output:\n{daemon.output[-3000:]}"
    assert str(db) in stderr, f"the message names the file: {stderr!r}"
    assert "Traceback" not in daemon.output, daemon.output
    assert db.read_bytes() == before, (
        f"{kind} state DB was modified by the failed start (balwatch/state/sqlite.py _open(): "
        "open_db() switches the file to WAL before the foreign-table check)"
    )
    # No -wal or -shm beside it; the daemon's lock file is the only one it may leave.
    assert sorted(p.name for p in state_dir.iterdir() if p.name != LOCK_FILE) == files_before


# --- signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_sighup_reloads_and_a_stop_signal_ends_balwatch_run_cleanly(
    tmp_path: Path, start_sim: StartSim, stop: signal.Signals
) -> None:
    """The signals `balwatch run` installs for the daemon (systemctl reload and stop, Ctrl-C)."""
    sim = await start_sim(*demo_accounts())
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"rules: ['{tmp_path}/rules.yaml']\n"
        "log: {format: json, level: info}\n" + accounts_yaml(sim.url)
    )
    with notify_socket() as (sock, notify_path):
        async with (
            Notifications(sock) as notes,
            balwatch_run(config, {**CREDENTIAL_ENV, "NOTIFY_SOCKET": notify_path}) as daemon,
        ):
            ready, _ = await notes.wait_for(lambda n: n.get("READY") == "1")
            daemon.signal(signal.SIGHUP)
            reloading, _ = await notes.wait_for(lambda n: n.get("RELOADING") == "1", after=ready)
            await notes.wait_for(lambda n: n.get("READY") == "1", after=reloading)
            daemon.signal(stop)
            code = await daemon.wait()
            await notes.wait_for(lambda n: n.get("STOPPING") == "1", after=reloading)
    assert code == 0, daemon.output[-3000:]
    assert '"event": "reloaded"' in daemon.output and '"event": "stopped"' in daemon.output
    assert "Traceback" not in daemon.output, daemon.output
