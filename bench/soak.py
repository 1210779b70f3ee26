"""Soak: ``balwatch run`` for a long while, 1,000 accounts, random faults; leaks and lost alerts.

Starts, on loopback: a Mosquitto broker; ``balwatch simulate`` (subprocess) with
``--accounts`` accounts spread over the four sources; ``balwatch run`` (subprocess) polling
them every ``--interval`` seconds with an MQTT sink and four rules that faults make fire and
resolve; an MQTT subscriber (in this process) on ``balwatch/alerts/#`` at QoS 1. While it
runs, ``--faults`` times a second a random account gets, through the simulator's control
API, one of: a 5xx (one to three in a row), a timeout, a throttle, a connection reset,
an HTML error page, malformed or truncated JSON, or a balance swing (available drops below
the rule's threshold and comes back 20-90 s later; on Kuna Core also an AML lock).

Every ``--sample`` seconds it prints the daemon's RSS and open file descriptors (from
``/proc/<pid>/status`` and ``/proc/<pid>/fd``), polls and alerts so far. At the end it stops
the faults, waits for the outbox to drain, stops the daemon with SIGTERM and prints:

* RSS growth: last sample against the first sample after ``--warmup`` (caches, history
  windows and connection pools fill during the warm-up);
* fd count min/max after the warm-up and the trend (mean of the last quarter of samples
  minus the mean of the first quarter);
* alerts expected vs delivered, per (rule, account, asset, event):
  expected = the daemon's ``alert`` log events: it logs one for each alert only after the
  alert was committed to the outbox (the transaction that also saves the engine state), so
  these are exactly the alerts it promised to deliver; delivered = distinct alert ``id``s
  the subscriber received; in outbox = deliveries still in the outbox database after the
  daemon exited (pending or dead-lettered: not lost, not delivered either);
  lost = sum over keys of max(0, expected - delivered - in outbox). Duplicates (one id
  received twice: delivery is at least once) are counted, not treated as errors.

Targets (issue 6) over 30 minutes: RSS growth < 5 %, fd count flat, 0 alerts lost.

``--replicas N`` (issue 14): instead of one daemon on SQLite, N replicas of one config on a
private PostgreSQL (tests/postgres.py), and every ``--kill-every`` seconds one of them in
turn is SIGKILLed and started again ``--down`` seconds later (its accounts fail over in the
meantime, its claimed deliveries are taken over when their claims expire). Expected alerts
are then the ``alert`` events of every replica's every run; what is left in the outbox is
read from PostgreSQL (through the state store, as ``balwatch outbox list`` does). RSS and fds
are sampled over the live replicas for information only: a killed replica starts afresh.
Target (issue 14) over 30 minutes: 0 alerts lost.

    .venv/bin/python bench/soak.py [--minutes 30] [--accounts 1000] [--interval 10]
        [--replicas 2 --kill-every 180 --down 20 --ttl 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import aiomqtt
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/brokers.py: the Mosquitto helper of the test suite

from balwatch.config.load import load_state_settings  # noqa: E402
from balwatch.state import state_store  # noqa: E402
from balwatch.state.base import OutboxEntry  # noqa: E402
from tests.brokers import Mosquitto, free_port, wait_for_port  # noqa: E402

EXCHANGES: Final = ("bitso", "coinapi", "kunacore", "coinw")
ASSETS: Final = ("USDT", "BTC", "ETH")
HIGH: Final = 5000
LOW: Final = 500
THRESHOLD: Final = 1000
RULES: Final = f"""\
defaults: {{severity: warning, for: 0s}}
rules:
  - name: low-available
    select: {{assets: [USDT]}}
    when: available < {THRESHOLD}
    clear: available >= {THRESHOLD}
    summary: "{{account}} {{asset}}: only {{available}} available"
  - name: sudden-drop
    select: {{assets: [USDT]}}
    when: pct_change(total, 1m) <= -50
    severity: critical
    summary: "{{account}} {{asset}}: total fell ({{values}})"
  - name: aml-lock
    select: {{exchanges: [kunacore]}}
    when: aml_locked > 0
    severity: critical
  - name: failing
    when: failures >= 2
    summary: "{{account}}: {{failures}} failed polls in a row"
"""
AlertKey = tuple[Any, Any, Any, Any]  # rule, account, asset, event


# --------------------------------------------------------------------------- set-up


def fields(exchange: str, available: int, aml: int = 0) -> dict[str, str]:
    """One asset's stored fields (normalized names; each fake source renders its own)."""
    locked = 100
    out = {"available": str(available), "locked": str(locked)}
    if exchange == "coinapi":
        out["total"] = str(available + locked)
        out["rate_usd"] = "1"
    if exchange == "kunacore":
        out = {"available": str(available), "hold": str(locked), "aml_locked": str(aml)}
    return out


@dataclass
class Account:
    name: str
    exchange: str
    venue: str

    @property
    def credentials(self) -> dict[str, str]:
        if self.exchange in ("bitso", "coinw"):
            return {"api_key": f"{self.name}-key", "api_secret": f"{self.name}-secret"}
        return {"api_key": f"{self.name}-key"}


def make_accounts(count: int) -> list[Account]:
    accounts = []
    for index in range(count):
        exchange = EXCHANGES[index % len(EXCHANGES)]
        venue = "BINANCE" if exchange == "coinapi" else exchange
        accounts.append(Account(f"{exchange}-{index:04d}", exchange, venue))
    return accounts


def write_files(directory: Path, accounts: list[Account]) -> None:
    sim_accounts = []
    for account in accounts:
        balances = {asset: fields(account.exchange, HIGH) for asset in ASSETS}
        entry: dict[str, Any] = {"name": account.name, "exchange": account.exchange}
        entry.update(account.credentials)
        if account.exchange == "coinapi":
            entry["venues"] = {account.venue: balances}
        else:
            entry["balances"] = balances
        sim_accounts.append(entry)
    (directory / "scenario.yaml").write_text(yaml.safe_dump({"accounts": sim_accounts}))
    (directory / "rules").mkdir()
    (directory / "rules" / "soak.rules.yaml").write_text(RULES)


def write_config(
    directory: Path,
    accounts: list[Account],
    sim_url: str,
    ports: Ports,
    state: dict[str, Any] | None = None,
) -> Path:
    """The daemon's config; with ``state`` (PostgreSQL), one for every replica: its
    instance, state_dir and HTTP port come from its environment."""
    replicas = state is not None
    config: dict[str, Any] = {
        "state_dir": "${BW_STATE_DIR}" if replicas else str(directory / "state"),
        **({"instance": "${BW_INSTANCE}", "state": state} if replicas else {}),
        "rules": ["rules/*.yaml"],
        "http": {"listen": "127.0.0.1:${BW_HTTP_PORT}" if replicas else f"127.0.0.1:{ports.http}"},
        "log": {"format": "json", "level": "info"},
        "defaults": {"poll_interval": f"{ports.interval}s", "timeout": "3s"},
        "accounts": [
            {
                "name": a.name,
                "exchange": a.exchange,
                "base_url": sim_url,
                "credentials": a.credentials,
            }
            for a in accounts
        ],
        "sinks": [
            {
                "type": "mqtt",
                "name": "mqtt",
                "url": f"mqtt://127.0.0.1:{ports.mqtt}",
                "topic_prefix": "balwatch",
                "qos": 1,
            }
        ],
    }
    path = directory / "balwatch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Ports:
    mqtt: int
    sim: int
    http: int
    interval: float


# --------------------------------------------------------------------------- observers


@dataclass
class Observed:
    expected: Counter[AlertKey] = field(default_factory=Counter)
    delivered_ids: dict[str, AlertKey] = field(default_factory=dict)
    messages: int = 0
    polls_failed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    log_lines: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0

    def delivered(self) -> Counter[AlertKey]:
        return Counter(self.delivered_ids.values())


async def read_logs(stream: asyncio.StreamReader, seen: Observed, log_file: Path) -> None:
    """The daemon's JSON log lines: ``alert`` events are the expected alerts."""
    with log_file.open("wb") as out:
        while line := await stream.readline():
            out.write(line)
            seen.log_lines += 1
            try:
                entry = json.loads(line)
            except ValueError:
                seen.errors["non-JSON log line"] += 1
                continue
            event = entry.get("event")
            if event == "alert":
                key = (entry.get("rule"), entry.get("account"), entry.get("asset"))
                seen.expected[(*key, entry.get("transition"))] += 1
            elif event == "poll_failed":
                seen.polls_failed[str(entry.get("kind"))] += 1
            elif entry.get("level") in ("error", "critical"):
                seen.errors[str(event)] += 1


async def subscribe(port: int, seen: Observed, ready: asyncio.Event) -> None:
    """Count every alert notification the broker hands us (QoS 1, persistent session)."""
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="balwatch-soak", clean_session=False
            ) as client:
                await client.subscribe("balwatch/alerts/#", qos=1)
                ready.set()
                async for message in client.messages:
                    seen.messages += 1
                    assert isinstance(message.payload, bytes | bytearray)
                    doc = json.loads(message.payload)
                    key = (doc["rule"], doc["account"], doc["asset"], doc["event"])
                    seen.delivered_ids[doc["id"]] = key
        except aiomqtt.MqttError:
            seen.errors["subscriber disconnected"] += 1
            await asyncio.sleep(0.5)


FAULTS: Final = (
    ("5xx", 6),
    ("timeout", 2),
    ("throttle", 2),
    ("reset", 1),
    ("html", 1),
    ("malformed_json", 1),
    ("truncated", 1),
    ("swing", 6),
)


async def inject_faults(
    control: aiohttp.ClientSession,
    accounts: list[Account],
    rate: float,
    rng: random.Random,
    seen: Observed,
    swings: set[asyncio.Task[None]],
) -> None:
    kinds = [kind for kind, weight in FAULTS for _ in range(weight)]
    while True:
        await asyncio.sleep(rng.expovariate(rate))
        account = rng.choice(accounts)
        kind = rng.choice(kinds)
        seen.faults[kind] += 1
        if kind == "swing":
            task = asyncio.create_task(swing(control, account, rng.uniform(20, 90)))
            swings.add(task)
            task.add_done_callback(swings.discard)
            continue
        body: dict[str, Any] = {"kind": kind}
        if kind == "5xx":
            body = {
                "kind": "status",
                "status": rng.choice([500, 502, 503]),
                "times": rng.randint(1, 3),
            }
        async with control.post(f"/_sim/accounts/{account.name}/faults", json=body) as resp:
            resp.raise_for_status()


async def set_usdt(control: aiohttp.ClientSession, account: Account, available: int) -> None:
    aml = 7 if available < THRESHOLD and account.exchange == "kunacore" else 0
    body = {"venue": account.venue, "balances": {"USDT": fields(account.exchange, available, aml)}}
    async with control.patch(f"/_sim/accounts/{account.name}/balances", json=body) as resp:
        resp.raise_for_status()


async def swing(control: aiohttp.ClientSession, account: Account, seconds: float) -> None:
    """USDT available drops below the threshold, then comes back: fires, then resolves."""
    await set_usdt(control, account, LOW)
    try:
        await asyncio.sleep(seconds)
    finally:
        with contextlib.suppress(aiohttp.ClientError):
            await set_usdt(control, account, HIGH)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def outbox_depth(http: aiohttp.ClientSession) -> float | None:
    try:
        async with http.get("/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith("balwatch_outbox_depth{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def left_in_outbox(db: Path) -> Counter[AlertKey]:
    left: Counter[AlertKey] = Counter()
    if not db.exists():
        return left
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT a.doc FROM outbox_delivery d JOIN outbox_alert a ON a.id = d.alert"
        ).fetchall()
    for (doc_text,) in rows:
        doc = json.loads(doc_text)
        left[(doc["rule"], doc["account"], doc["asset"], doc["event"])] += 1
    return left


# --------------------------------------------------------------------------- the run


@dataclass
class Sample:
    elapsed: float
    rss_kib: int
    fds: int


async def soak(args: argparse.Namespace, directory: Path) -> int:
    rng = random.Random(args.seed)
    accounts = make_accounts(args.accounts)
    write_files(directory, accounts)
    seen = Observed()
    # The subscriber's session must not drop messages however many queue up.
    async with Mosquitto(extra_config="max_queued_messages 0\n") as broker:
        ports = Ports(broker.port, free_port(), free_port(), args.interval)
        if args.replicas:
            return await soak_replicas(args, directory, rng, accounts, ports, seen)
        return await soak_with_broker(args, directory, rng, accounts, ports, seen)


async def soak_with_broker(
    args: argparse.Namespace,
    directory: Path,
    rng: random.Random,
    accounts: list[Account],
    ports: Ports,
    seen: Observed,
) -> int:
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balwatch", "simulate", "--scenario",
        str(directory / "scenario.yaml"), "--port", str(ports.sim),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    daemon: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[None]] = []
    swings: set[asyncio.Task[None]] = set()
    try:
        await wait_for_port(ports.sim, timeout=60, process=sim)
        sim_url = f"http://127.0.0.1:{ports.sim}"
        config = write_config(directory, accounts, sim_url, ports)
        subscribed = asyncio.Event()
        tasks.append(asyncio.create_task(subscribe(ports.mqtt, seen, subscribed)))
        await asyncio.wait_for(subscribed.wait(), 10)
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "balwatch", "run", "-c", str(config),
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert daemon.stderr is not None
        tasks.append(asyncio.create_task(read_logs(daemon.stderr, seen, directory / "daemon.log")))
        async with (
            aiohttp.ClientSession(sim_url) as control,
            aiohttp.ClientSession(f"http://127.0.0.1:{ports.http}") as http,
        ):
            await wait_ready(http, daemon)
            print(
                f"soak: {args.accounts} accounts ({', '.join(EXCHANGES)}), poll every "
                f"{args.interval:g}s, {args.faults:g} faults/s, {args.minutes:g} min; "
                f"daemon pid {daemon.pid}",
                flush=True,
            )
            started = time.monotonic()
            tasks.append(
                asyncio.create_task(
                    inject_faults(control, accounts, args.faults, rng, seen, swings)
                )
            )
            samples = await sample_until(daemon, started, args, seen)
            for task in tasks[2:]:
                task.cancel()
            for task in list(swings):
                task.cancel()
            await asyncio.gather(*tasks[2:], *swings, return_exceptions=True)
            drained = await drain(http, args.drain)
        daemon.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(daemon.wait(), 60)
        await asyncio.sleep(2)  # the last PUBLISHes on their way to the subscriber
        return report(args, samples, seen, drained, code, directory)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for process in (daemon, sim):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


async def wait_ready(http: aiohttp.ClientSession, daemon: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.returncode is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get("/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.5)
    raise RuntimeError("the daemon did not become ready in 120 s")


async def sample_until(
    daemon: asyncio.subprocess.Process,
    started: float,
    args: argparse.Namespace,
    seen: Observed,
) -> list[Sample]:
    samples: list[Sample] = []
    end = started + args.minutes * 60
    print(
        f"{'min':>6} {'RSS MiB':>8} {'fds':>5} {'failed polls':>12} {'alerts':>7} "
        f"{'delivered':>9} {'faults':>6}",
        flush=True,
    )
    while True:
        now = time.monotonic()
        if daemon.returncode is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} during the soak")
        sample = Sample(now - started, rss_kib(daemon.pid), open_fds(daemon.pid))
        samples.append(sample)
        print(
            f"{sample.elapsed / 60:6.1f} {sample.rss_kib / 1024:8.1f} {sample.fds:5d} "
            f"{sum(seen.polls_failed.values()):12,d} {sum(seen.expected.values()):7,d} "
            f"{len(seen.delivered_ids):9,d} {sum(seen.faults.values()):6,d}",
            flush=True,
        )
        if now >= end:
            return samples
        await asyncio.sleep(min(args.sample, end - now))


async def drain(http: aiohttp.ClientSession, seconds: float) -> bool:
    """Wait until the outbox has been empty for two checks in a row."""
    deadline = time.monotonic() + seconds
    empty = 0
    while time.monotonic() < deadline:
        depth = await outbox_depth(http)
        empty = empty + 1 if depth == 0 else 0
        if empty >= 2:
            return True
        await asyncio.sleep(1)
    return False


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    seen: Observed,
    drained: bool,
    code: int,
    directory: Path,
) -> int:
    steady = [s for s in samples if s.elapsed >= args.warmup] or samples[-1:]
    base, last = steady[0], steady[-1]
    growth = (last.rss_kib - base.rss_kib) / base.rss_kib * 100
    fds = [s.fds for s in steady]
    quarter = max(1, len(steady) // 4)
    trend = statistics.mean(fds[-quarter:]) - statistics.mean(fds[:quarter])
    middle = steady[len(steady) // 2]
    late = (last.rss_kib - middle.rss_kib) / middle.rss_kib * 100
    print(f"\nafter {samples[-1].elapsed / 60:.1f} min (warm-up {args.warmup:g} s excluded):")
    print(
        f"  RSS {base.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB: {growth:+.1f} % "
        f"(max {max(s.rss_kib for s in steady) / 1024:.1f} MiB; {late:+.1f} % in the second "
        f"half)  [target < 5 %: {'met' if growth < 5 else 'MISSED'}]"
    )
    # Connections come and go with timeouts and resets; a leak shows as a rising count.
    flat = trend <= max(5.0, 0.1 * statistics.mean(fds))
    print(
        f"  fds min {min(fds)} max {max(fds)}, trend {trend:+.1f} (last quarter vs first)  "
        f"[target flat: {'met' if flat else 'MISSED'}]"
    )
    lost = alert_figures(seen, left_in_outbox(directory / "state" / "balwatch.db"))
    print(
        f"  outbox drained before stop: {drained}; daemon exit code {code}; "
        f"error log events: {dict(seen.errors) or 0}; {seen.log_lines:,} log lines"
    )
    ok = growth < 5 and flat and lost == 0 and code == 0
    return 0 if ok else 1


# --------------------------------------------------------------------------- replicas


@dataclass
class Replica:
    """One ``balwatch run`` of the PostgreSQL mode, started again after each kill."""

    name: str
    http_port: int
    state_dir: Path
    process: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    runs: int = 0

    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "BW_INSTANCE": self.name,
            "BW_HTTP_PORT": str(self.http_port),
            "BW_STATE_DIR": str(self.state_dir),
        }

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


async def start_replica(replica: Replica, config: Path, seen: Observed, directory: Path) -> None:
    replica.runs += 1
    replica.state_dir.mkdir(exist_ok=True)
    replica.process = process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balwatch", "run", "-c", str(config), env=replica.environ(),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stderr is not None
    log = directory / f"{replica.name}-run{replica.runs}.log"
    replica.reader = asyncio.create_task(read_logs(process.stderr, seen, log))


async def kill_in_turn(
    replicas: list[Replica], config: Path, seen: Observed, directory: Path, args: argparse.Namespace
) -> None:
    """Every ``--kill-every`` s, SIGKILL the next replica; start it ``--down`` s later."""
    for turn in itertools.count():
        await asyncio.sleep(args.kill_every)
        replica = replicas[turn % len(replicas)]
        assert replica.process is not None and replica.reader is not None
        replica.process.kill()
        await replica.process.wait()
        await replica.reader  # its last log lines: alerts it committed before it died
        seen.kills += 1
        print(f"  SIGKILL {replica.name}; started again in {args.down:g} s", flush=True)
        await asyncio.sleep(args.down)
        await start_replica(replica, config, seen, directory)


def check_environ(config: Path) -> dict[str, str]:
    """What the config's ${...} need when this script reads the store (as a CLI would)."""
    return {
        **os.environ,
        "BW_INSTANCE": "soak-check",
        "BW_HTTP_PORT": "0",
        "BW_STATE_DIR": str(config.parent / "check"),
    }


async def outbox_entries(config: Path) -> list[OutboxEntry]:
    settings = load_state_settings(config, check_environ(config))
    async with state_store(settings, exclusive=False) as store:
        return await store.outbox()


async def drain_store(config: Path, seconds: float) -> bool:
    """Until no delivery is pending in PostgreSQL for two checks in a row."""
    deadline = time.monotonic() + seconds
    empty = 0
    while time.monotonic() < deadline:
        pending = [e for e in await outbox_entries(config) if e.status == "pending"]
        empty = empty + 1 if not pending else 0
        if empty >= 2:
            return True
        await asyncio.sleep(1)
    return False


async def wait_healthy(http: aiohttp.ClientSession, replica: Replica) -> None:
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{replica.http_port}/healthz"
    while time.monotonic() < deadline:
        if not replica.alive:
            raise RuntimeError(
                f"{replica.name} exited with {replica.process and replica.process.returncode}"
            )
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{replica.name} did not answer /healthz in 120 s")


async def soak_replicas(
    args: argparse.Namespace,
    directory: Path,
    rng: random.Random,
    accounts: list[Account],
    ports: Ports,
    seen: Observed,
) -> int:
    from tests.postgres import PostgresServer

    server = PostgresServer()
    replicas = [
        Replica(f"soak-{i + 1}", free_port(), directory / f"soak-{i + 1}")
        for i in range(args.replicas)
    ]
    sim: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[None]] = []
    swings: set[asyncio.Task[None]] = set()
    try:
        await asyncio.to_thread(server.start)
        dsn = await asyncio.to_thread(server.create_database, "soak")
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "balwatch", "simulate", "--scenario",
            str(directory / "scenario.yaml"), "--port", str(ports.sim),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_for_port(ports.sim, timeout=60, process=sim)
        sim_url = f"http://127.0.0.1:{ports.sim}"
        state = {"backend": "postgres", "dsn": dsn, "lease_ttl": f"{args.ttl:g}s"}
        config = write_config(directory, accounts, sim_url, ports, state)
        subscribed = asyncio.Event()
        tasks.append(asyncio.create_task(subscribe(ports.mqtt, seen, subscribed)))
        await asyncio.wait_for(subscribed.wait(), 10)
        for replica in replicas:
            await start_replica(replica, config, seen, directory)
        async with (
            aiohttp.ClientSession(sim_url) as control,
            aiohttp.ClientSession() as http,
        ):
            for replica in replicas:
                await wait_healthy(http, replica)
            print(
                f"soak: {args.accounts} accounts, {args.replicas} replicas on PostgreSQL "
                f"(lease_ttl {args.ttl:g} s), one SIGKILLed every {args.kill_every:g} s and "
                f"back {args.down:g} s later; poll every {args.interval:g}s, "
                f"{args.faults:g} faults/s, {args.minutes:g} min",
                flush=True,
            )
            started = time.monotonic()
            chaos = [
                asyncio.create_task(
                    inject_faults(control, accounts, args.faults, rng, seen, swings)
                ),
                asyncio.create_task(kill_in_turn(replicas, config, seen, directory, args)),
            ]
            await sample_replicas(replicas, started, args, seen)
            for task in [*chaos, *swings]:
                task.cancel()
            await asyncio.gather(*chaos, *swings, return_exceptions=True)
            for replica in replicas:  # one may be between its kill and its start
                if not replica.alive:
                    await start_replica(replica, config, seen, directory)
            drained = await drain_store(config, args.drain)
            elapsed = time.monotonic() - started
        codes = []
        for replica in replicas:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGTERM)
            codes.append(await asyncio.wait_for(replica.process.wait(), 60))
        await asyncio.gather(*(r.reader for r in replicas if r.reader is not None))
        await asyncio.sleep(2)  # the last PUBLISHes on their way to the subscriber
        left: Counter[AlertKey] = Counter(
            (e.alert["rule"], e.alert["account"], e.alert["asset"], e.alert["event"])
            for e in await outbox_entries(config)
        )
        print(f"\nafter {elapsed / 60:.1f} min, {seen.kills} replicas SIGKILLed:")
        lost = alert_figures(seen, left)
        print(
            f"  outbox drained before stop: {drained}; exit codes {codes}; "
            f"error log events: {dict(seen.errors) or 0}; {seen.log_lines:,} log lines"
        )
        return 0 if lost == 0 and not any(codes) else 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for process in [r.process for r in replicas] + [sim]:
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        await asyncio.to_thread(server.close)


async def sample_replicas(
    replicas: list[Replica], started: float, args: argparse.Namespace, seen: Observed
) -> None:
    end = started + args.minutes * 60
    print(
        f"{'min':>6} {'RSS MiB':>8} {'fds':>5} {'failed polls':>12} {'alerts':>7} "
        f"{'delivered':>9} {'faults':>6} {'kills':>5}   (RSS, fds: live replicas summed)",
        flush=True,
    )
    while True:
        now = time.monotonic()
        rss = fds = 0
        for replica in replicas:
            if replica.alive:
                assert replica.process is not None
                with contextlib.suppress(OSError, RuntimeError):
                    rss += rss_kib(replica.process.pid)
                    fds += open_fds(replica.process.pid)
        print(
            f"{(now - started) / 60:6.1f} {rss / 1024:8.1f} {fds:5d} "
            f"{sum(seen.polls_failed.values()):12,d} {sum(seen.expected.values()):7,d} "
            f"{len(seen.delivered_ids):9,d} {sum(seen.faults.values()):6,d} {seen.kills:5d}",
            flush=True,
        )
        if now >= end:
            return
        await asyncio.sleep(min(args.sample, end - now))


def alert_figures(seen: Observed, left: Counter[AlertKey]) -> int:
    """Print expected, delivered, duplicate and lost alerts, and the faults; the lost count."""
    expected, delivered = seen.expected, seen.delivered()
    keys = set(expected) | set(delivered)
    lost = sum(max(0, expected[k] - delivered[k] - left[k]) for k in keys)
    unexpected = sum(max(0, delivered[k] - expected[k]) for k in keys)
    events = Counter(key[3] for key in expected.elements())
    by_event = ", ".join(f"{n} {e}" for e, n in sorted(events.items()))
    duplicates = seen.messages - len(seen.delivered_ids)
    print(
        f"  alerts expected {sum(expected.values()):,} ({by_event}), delivered "
        f"{sum(delivered.values()):,} distinct ids, {duplicates} duplicates, "
        f"{sum(left.values())} left in the outbox, {unexpected} unexpected"
    )
    print(f"  alerts lost: {lost}  [target 0: {'met' if lost == 0 else 'MISSED'}]")
    print(
        f"  polls failed by kind: {dict(seen.polls_failed)}; faults injected: {dict(seen.faults)}"
    )
    return lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--faults", type=float, default=2.0, help="faults injected per second")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, help="seconds left out (default: 20 %%, <= 5 min)")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait at the end")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--replicas", type=int, default=0, help="N replicas on PostgreSQL (0: one on SQLite)"
    )
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds between kills")
    parser.add_argument("--down", type=float, default=20.0, help="seconds a killed one stays down")
    parser.add_argument("--ttl", type=float, default=8.0, help="lease_ttl, seconds")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(300.0, args.minutes * 60 * 0.2)
    directory = Path(tempfile.mkdtemp(prefix="balwatch-soak-"))
    try:
        return asyncio.run(soak(args, directory))
    finally:
        if args.keep:
            print(f"work directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
