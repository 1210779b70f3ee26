"""The daemon under load: CPU, memory and poll-to-MQTT latency of ``balwatch run``.

Runs ``balwatch run`` as a subprocess (so its CPU and memory are its own) with ``--accounts``
accounts (default 1,000) spread evenly over the four sources, each polled every
``--interval`` seconds (default 10), all served by one simulator in this process; a rule set
of 50 rules; one MQTT sink to a Mosquitto this script starts on a free loopback port. After
the daemon reports READY=1 (sd_notify on a socket of ours), it measures for ``--duration``
seconds (default 60) and prints:

* CPU share of one core: (utime + stime) from ``/proc/<pid>/stat`` over the measured window
  divided by its wall time; start-up (config, first poll round) is reported separately;
* peak RSS: ``VmHWM`` from ``/proc/<pid>/status`` (the kernel's high-water mark, start-up
  included), read just before the daemon is stopped;
* latency from poll response to MQTT receipt, p50/p99/max.

Latency method: every ``--change-every`` seconds the script changes one account's USDT
``available`` in the simulator (below the ``bench-trigger`` rule's threshold, and back above
it two intervals later, so each alert fires and then resolves) and *arms* that account. An
aiohttp middleware in the simulator stamps ``time.monotonic()`` when the first balance
response rendered after the change leaves the handler (rendering and stamp run in the same
event-loop step, so the stamped response is the first one that carries the change). An
MQTT subscriber in this process stamps the arrival of the matching ``firing``/``resolved``
message on ``balwatch/alerts/bench-trigger/<account>/<venue>/USDT``. Latency is the difference of
the two stamps, on one clock; it spans the HTTP response transfer and parse, rule
evaluation, the outbox commit (SQLite WAL, synchronous=FULL), the QoS 1 publish and the
broker's fan-out, plus this process's own delay in noticing the message (it also serves
the simulator, so the figure is an upper bound). The wait for the next poll is not part of
it. The machine's other load shows directly in the figure: the report prints the load
average.

Prometheus: the daemon serves ``/metrics`` on a loopback port and this script scrapes it
every ``--scrape`` seconds (default 15, a common Prometheus interval; 0: no HTTP server, no
scrapes), as a Prometheus server would, and reports each scrape's time and size. The daemon
renders on its event loop in slices of a millisecond (before, on a worker thread, which took
the GIL from the loop in 5 ms turns), so a scrape shows in the CPU figure and, where a slice
delays a poll's handling, in the latency figure.

``--baseline REV`` measures the daemon of git revision REV first (its ``balwatch`` package,
exported to a temporary directory and run from there; the simulator and this script stay the
working tree's), then the working tree's, in the same run, and prints both side by side: the
way to show what a change costs on a machine whose load moves from day to day.

``--profile FILE`` runs the daemon under cProfile (figures are then inflated; for finding
where the time goes).

Targets (issue 5): <= 10% of one core, <= 120 MB peak RSS, p99 <= 20 ms.

    .venv/bin/python bench/daemon.py [--accounts 1000] [--interval 10] [--duration 60]
        [--scrape 15] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiomqtt
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/brokers.py: the Mosquitto helper of the test suite

from balwatch.adapters.kunacore import LOGIN_PATH  # noqa: E402
from balwatch.simulator.server import build_app  # noqa: E402
from balwatch.simulator.state import SimAccount, SimState  # noqa: E402
from tests.brokers import Mosquitto, free_port  # noqa: E402

CPU_TARGET = 0.10
RSS_TARGET_MB = 120.0
P99_TARGET_MS = 20.0
SOURCES = ("bitso", "coinapi", "kunacore", "coinw")
TRIGGER = "bench-trigger"

# --- the simulator with a response stamp ---------------------------------------------

_served: contextvars.ContextVar[str | None] = contextvars.ContextVar("served", default=None)


class StampedState(SimState):
    """Remembers, per request, which account it served (for the stamping middleware)."""

    def record(self, account: SimAccount) -> None:
        super().record(account)
        _served.set(account.name)


@dataclass
class Latencies:
    armed: dict[str, str] = field(default_factory=dict)  # account -> event expected
    stamped: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> (event, t)
    samples: list[float] = field(default_factory=list)
    changes: int = 0
    unmatched: int = 0  # MQTT arrivals without a stamped response (should stay 0)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a stamp or an arrival


def stamping_middleware(lat: Latencies) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def stamp(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        response = await handler(request)
        # No await between the handler's rendering and here: the armed set is as it was.
        name = _served.get()
        balance_answer = response.status == 200 and request.path != LOGIN_PATH
        if name is not None and name in lat.armed and balance_answer:
            lat.stamped[name] = (lat.armed.pop(name), time.monotonic())
            lat.changed.set()
        return response

    return stamp


def sim_accounts(count: int) -> list[SimAccount]:
    accounts = []
    for i in range(count):
        source = SOURCES[i % 4]
        name = f"{source}-{i:04d}"
        if source == "bitso":
            accounts.append(
                SimAccount(
                    name,
                    source,
                    api_key=f"bk-{i}",
                    api_secret=f"bs-{i}",
                    balances={
                        "bitso": {
                            "USDT": {"total": "25000", "available": "24000", "locked": "1000"},
                            "MXN": {"total": "410000", "available": "400000", "locked": "10000"},
                            "BTC": {"total": "1.25", "available": "1.2", "locked": "0.05"},
                        }
                    },
                )
            )
        elif source == "coinapi":
            accounts.append(
                SimAccount(
                    name,
                    source,
                    api_key=f"ck-{i}",
                    balances={
                        "BINANCESPOT": {
                            "BTC": {
                                "total": "3.5",
                                "available": "3.1",
                                "locked": "0.4",
                                "rate_usd": "61250.10",
                            },
                            "USDT": {
                                "total": "150000",
                                "available": "149000",
                                "locked": "1000",
                                "rate_usd": "1.0001",
                            },
                        },
                        "KRAKEN": {
                            "ETH": {
                                "total": "42",
                                "available": "42",
                                "locked": "0",
                                "rate_usd": "3010.55",
                            }
                        },
                    },
                )
            )
        elif source == "kunacore":
            accounts.append(
                SimAccount(
                    name,
                    source,
                    merchant_id="bench-merchant",
                    login=f"user{i}@example.com",
                    password=f"pw-{i}",
                    balances={
                        "kunacore": {
                            "USDT": {
                                "available": "88000",
                                "hold": "0",
                                "aml_locked": "0",
                                "referral": "12.5",
                            },
                            "TRX": {
                                "available": "500000",
                                "hold": "2500",
                                "aml_locked": "0",
                                "referral": "0",
                            },
                        }
                    },
                )
            )
        else:
            accounts.append(
                SimAccount(
                    name,
                    source,
                    api_key=f"wk-{i}",
                    api_secret=f"ws-{i}",
                    balances={
                        "coinw": {
                            "USDT": {"available": "12000", "locked": "300"},
                            "BTC": {"available": "1.5", "locked": "0"},
                        }
                    },
                )
            )
    return accounts


def accounts_yaml(accounts: list[SimAccount], url: str) -> str:
    lines = ["accounts:"]
    for a in accounts:
        if a.exchange == "kunacore":
            creds = f"{{merchant_id: {a.merchant_id}, login: '{a.login}', password: {a.password}}}"
        elif a.api_secret is None:
            creds = f"{{api_key: {a.api_key}}}"
        else:
            creds = f"{{api_key: {a.api_key}, api_secret: {a.api_secret}}}"
        lines.append(
            f"  - {{name: {a.name}, exchange: {a.exchange}, base_url: '{url}', "
            f"credentials: {creds}}}"
        )
    return "\n".join(lines) + "\n"


def rules_yaml() -> str:
    """50 rules: the trigger, the example rules' kinds, and per-asset threshold tiers.

    Only ``bench-trigger`` ever fires: every other threshold is far from the balances, and
    no other rule reads USDT ``available`` (a USDT tier would go pending with each trigger,
    and the latency would then measure the engine-state size, not the path).
    """
    rules = [
        f"  - {{name: {TRIGGER}, select: {{assets: [USDT]}}, when: available < 1, for: 0s, "
        "severity: critical, summary: '{account} {asset}: {available} available'}",
        "  - {name: account-stale, when: age > 5m}",
        "  - {name: polls-failing, when: failures >= 3}",
        "  - {name: aml-lock, select: {exchanges: [kunacore]}, when: aml_locked > 0, for: 0s}",
        "  - {name: large-pending-withdrawal, select: {exchanges: [bitso]}, "
        "when: pending_withdrawal > 0.25 * total}",
        "  - {name: sudden-drop, when: 'pct_change(total, 5m) <= -20', for: 0s}",
        "  - {name: slow-drain, select: {exclude: {assets: [USDT]}}, "
        "when: 'pct_change(available, 10m) <= -50'}",
        "  - {name: usd-floor, select: {exchanges: [coinapi]}, when: usd(total) < 10}",
        "  - {name: btc-min-window, select: {assets: [BTC]}, "
        "when: 'min_over(available, 2m) < 0.001'}",
        "  - {name: usdt-swing, select: {assets: [USDT]}, when: 'delta(total, 5m) < -1000000'}",
    ]
    floors = {"BTC": 0.5, "ETH": 10, "MXN": 100000, "TRX": 100000}
    for asset, floor in floors.items():
        for tier in range(1, 11):
            threshold = floor * tier / 100
            rules.append(
                f"  - {{name: low-{asset.lower()}-{tier}, select: {{assets: [{asset}]}}, "
                f"when: available < {threshold:g}, for: 1m, labels: {{tier: '{tier}'}}}}"
            )
    assert len(rules) == 50, len(rules)
    return "defaults: {severity: warning, for: 30s}\nrules:\n" + "\n".join(rules) + "\n"


# --- /proc -----------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (not its children), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# --- the run ---------------------------------------------------------------------------


async def wait_ready(sock: socket.socket, proc: asyncio.subprocess.Process, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            recv = asyncio.ensure_future(loop.sock_recv(sock, 4096))
            died = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({recv, died}, return_when=asyncio.FIRST_COMPLETED)
            if died in done:
                recv.cancel()
                raise RuntimeError(f"balwatch run exited with {proc.returncode} before READY")
            died.cancel()
            fields = dict(
                line.split("=", 1) for line in recv.result().decode().splitlines() if "=" in line
            )
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")


async def change_balances(
    state: SimState, lat: Latencies, every: float, hold: float, stop: asyncio.Event, seed: int
) -> None:
    """Every ``every`` s change one account's USDT ``available`` and arm the account.

    An account that has been below the trigger threshold for ``hold`` seconds goes back up
    (its alert resolves); otherwise the next account goes down (its alert fires). So about
    ``hold / (2 * every)`` trigger alerts are firing at any time, as many as fire per hold.
    """
    names = sorted(state.accounts)
    random.Random(seed).shuffle(names)
    low: dict[str, float] = {}  # account -> when it went low, oldest first
    index = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            break
        oldest = next(iter(low), None)
        busy = set(lat.armed) | set(lat.stamped)  # still waiting for the previous alert
        if oldest is not None and time.monotonic() - low[oldest] >= hold and oldest not in busy:
            name, going_low = oldest, False
            del low[oldest]
        else:
            candidates = (names[(index + i) % len(names)] for i in range(len(names)))
            name = next((n for n in candidates if n not in low and n not in busy), "")
            if not name:
                continue
            index = names.index(name) + 1
            going_low = True
            low[name] = time.monotonic()
        account = state.accounts[name]
        venue = next(v for v, assets in account.balances.items() if "USDT" in assets)
        account.balances[venue]["USDT"]["available"] = "0.5" if going_low else "24000"
        lat.armed[name] = "firing" if going_low else "resolved"
        lat.changes += 1


async def listen(port: int, lat: Latencies, ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"balwatch/alerts/{TRIGGER}/#", qos=1)
        ready.set()
        async for message in client.messages:
            arrived = time.monotonic()
            assert isinstance(message.payload, bytes)
            doc = json.loads(message.payload)
            stamped = lat.stamped.get(doc["account"])
            if stamped is not None and stamped[0] == doc["event"]:
                del lat.stamped[doc["account"]]
                lat.samples.append(arrived - stamped[1])
            else:
                lat.unmatched += 1
            lat.changed.set()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Measured:
    startup: float  # launch to READY=1, seconds
    startup_cpu: float
    window: float  # READY to the end of the measurement, seconds
    cpu: float  # daemon CPU seconds in the window
    peak_kb: int  # VmHWM
    end_kb: int  # VmRSS at the end
    requests: int  # simulator requests in the window
    bench_cpu: float  # this process (simulator, subscriber) in the window
    code: int  # the daemon's exit code after SIGTERM


@dataclass
class Scrapes:
    """What each ``/metrics`` scrape in the window took: seconds, body bytes, series."""

    seconds: list[float] = field(default_factory=list)
    size: int = 0
    series: int = 0
    balance_series: int = 0
    errors: int = 0


async def scrape_metrics(url: str, every: float, stop: asyncio.Event, scrapes: Scrapes) -> None:
    """Scrape ``url`` every ``every`` seconds until ``stop``, as a Prometheus server would."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                break
            started = time.monotonic()
            try:
                async with http.get(url) as response:
                    body = await response.read()
            except aiohttp.ClientError:
                scrapes.errors += 1
                continue
            scrapes.seconds.append(time.monotonic() - started)
            lines = [line for line in body.split(b"\n") if line and not line.startswith(b"#")]
            scrapes.size, scrapes.series = len(body), len(lines)
            scrapes.balance_series = sum(
                1 for line in lines if line.startswith(b"balwatch_balance")
            )


def export_tree(rev: str, into: Path) -> Path:
    """The ``balwatch`` package of git revision ``rev``, written below ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "balwatch"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def daemon_command(config: Path, profile: str | None) -> list[str]:
    prefix = (
        [sys.executable] if profile is None else [sys.executable, "-m", "cProfile", "-o", profile]
    )
    return [*prefix, "-m", "balwatch", "run", "-c", str(config)]


async def measure(
    args: argparse.Namespace,
    work: Path,
    state: SimState,
    lat: Latencies,
    sim_url: str,
    source: Path | None,
    scrapes: Scrapes,
) -> Measured:
    """One daemon's run; ``source``: where its ``balwatch`` package is (None: installed)."""
    notify_path = str(work / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(notify_path)
        async with Mosquitto() as broker:
            subscribed = asyncio.Event()
            listener = asyncio.create_task(listen(broker.port, lat, subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            rules = work / "rules.yaml"
            rules.write_text(rules_yaml())
            config = work / "balwatch.yaml"
            http_port = free_port()
            config.write_text(
                f"state_dir: {work / 'state'}\n"
                f"rules: ['{rules}']\n"
                + (f"http: {{listen: '127.0.0.1:{http_port}'}}\n" if args.scrape else "")
                + f"defaults: {{poll_interval: {args.interval}s, timeout: 5s}}\n"
                "log: {format: json, level: warning}\n"
                f"sinks:\n  - {{name: mqtt, type: mqtt, url: '{broker.url}'}}\n"
                + accounts_yaml(list(state.accounts.values()), sim_url)
            )
            with (work / "daemon.log").open("wb") as log:
                t_launch = time.monotonic()
                # `python -m` looks in its working directory first: the exported package.
                pythonpath = {} if source is None else {"PYTHONPATH": str(source)}
                proc = await asyncio.create_subprocess_exec(
                    *daemon_command(config, args.profile),
                    env={**os.environ, "NOTIFY_SOCKET": notify_path, **pythonpath},
                    cwd=source,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
                metrics_url = f"http://127.0.0.1:{http_port}/metrics" if args.scrape else None
                try:
                    measured = await _window(
                        args, proc, sock, state, lat, t_launch, metrics_url, scrapes
                    )
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener
    return measured


async def _window(
    args: argparse.Namespace,
    proc: asyncio.subprocess.Process,
    sock: socket.socket,
    state: SimState,
    lat: Latencies,
    t_launch: float,
    metrics_url: str | None,
    scrapes: Scrapes,
) -> Measured:
    status = await wait_ready(sock, proc, timeout=max(120.0, 3 * args.interval))
    t_ready = time.monotonic()
    cpu_ready = cpu_seconds(proc.pid)
    bench_ready = time.process_time()
    requests_ready = sum(a.requests for a in state.accounts.values())
    print(
        f"daemon pid {proc.pid} ready after {t_ready - t_launch:.1f}s: {status}; "
        f"measuring {args.duration:g}s",
        flush=True,
    )
    stop = asyncio.Event()
    changer = asyncio.create_task(
        change_balances(state, lat, args.change_every, 2 * args.interval, stop, args.seed)
    )
    scraper = asyncio.create_task(
        scrape_metrics(metrics_url, args.scrape, stop, scrapes)
        if metrics_url is not None
        else stop.wait()
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), args.duration)  # the measured window itself
    if proc.returncode is not None:
        raise RuntimeError(f"balwatch run exited with {proc.returncode} during the run")
    stop.set()
    await changer
    await scraper
    t_end = time.monotonic()
    cpu_end = cpu_seconds(proc.pid)
    bench_end = time.process_time()
    peak_kb = status_kb(proc.pid, "VmHWM")
    end_kb = status_kb(proc.pid, "VmRSS")
    requests_end = sum(a.requests for a in state.accounts.values())
    # Let alerts for the last changes arrive (one interval), with no new changes.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.interval + 2):
            while lat.armed or lat.stamped:
                lat.changed.clear()
                await lat.changed.wait()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 30)
    return Measured(
        startup=t_ready - t_launch,
        startup_cpu=cpu_ready,
        window=t_end - t_ready,
        cpu=cpu_end - cpu_ready,
        peak_kb=peak_kb,
        end_kb=end_kb,
        requests=requests_end - requests_ready,
        bench_cpu=bench_end - bench_ready,
        code=code,
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "OVER TARGET"


def report(
    args: argparse.Namespace, tree: str, m: Measured, lat: Latencies, scrapes: Scrapes
) -> None:
    cpu_share = m.cpu / m.window
    peak_mb = m.peak_kb / 1024
    per_source = ", ".join(f"{args.accounts // 4} {s}" for s in SOURCES)
    print(
        f"\n{tree}: {args.accounts} accounts ({per_source}), every {args.interval:g}s, "
        f"50 rules, MQTT sink; measured {m.window:.1f}s after READY"
    )
    print(
        f"  load             {m.requests / m.window:7.1f} simulator requests/s "
        f"({m.requests / args.accounts:.1f} polls per account in the window)"
    )
    print(f"  start-up         {m.startup:7.1f} s to READY=1, {m.startup_cpu:.2f} s CPU")
    print(
        f"  CPU              {cpu_share * 100:7.2f} % of one core  "
        f"(target <= {CPU_TARGET * 100:.0f}%: {verdict(cpu_share <= CPU_TARGET)})"
    )
    print(
        f"  peak RSS         {peak_mb:7.1f} MB (VmHWM; {m.end_kb / 1024:.1f} MB at the end)  "
        f"(target <= {RSS_TARGET_MB:.0f} MB: {verdict(peak_mb <= RSS_TARGET_MB)})"
    )
    if lat.samples:
        ms = [s * 1000 for s in lat.samples]
        p99 = percentile(ms, 99)
        print(
            f"  latency          p50 {percentile(ms, 50):.2f} ms, p99 {p99:.2f} ms, "
            f"max {max(ms):.2f} ms over {len(ms)} alerts  "
            f"(target p99 <= {P99_TARGET_MS:.0f} ms: {verdict(p99 <= P99_TARGET_MS)})"
        )
    else:
        print("  latency          no samples: no change was polled (run longer)")
    if scrapes.seconds:
        ms = [s * 1000 for s in scrapes.seconds]
        print(
            f"  /metrics         {len(ms)} scrapes every {args.scrape:g}s: median "
            f"{statistics.median(ms):.0f} ms, max {max(ms):.0f} ms; {scrapes.size / 1024:.0f} KiB, "
            f"{scrapes.series} series ({scrapes.balance_series} balance)"
            + (f"; {scrapes.errors} failed" if scrapes.errors else "")
        )
    if lat.unmatched or lat.armed or lat.stamped:
        print(
            f"  note: {lat.unmatched} unmatched MQTT messages, {len(lat.armed)} changes never "
            f"polled, {len(lat.stamped)} polled changes without an alert"
        )
    others = os.getloadavg()[0]
    print(
        f"  context          this process (simulator, subscriber) used "
        f"{m.bench_cpu / m.window * 100:.1f}% of a core; load average {others:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    print(f"  daemon exit code {m.code} after SIGTERM")


@dataclass
class Outcome:
    tree: str
    measured: Measured
    lat: Latencies
    scrapes: Scrapes


async def run_tree(args: argparse.Namespace, tree: str, source: Path | None) -> Outcome:
    """One measurement, with its own simulator state, broker and state directory."""
    work = Path(tempfile.mkdtemp(prefix="balwatch-bench-"))
    lat = Latencies()
    scrapes = Scrapes()
    state = StampedState(sim_accounts(args.accounts))
    app = build_app(state)
    app.middlewares.append(stamping_middleware(lat))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        measured = await measure(args, work, state, lat, sim_url, source, scrapes)
    finally:
        await runner.cleanup()
    report(args, tree, measured, lat, scrapes)
    if args.keep or args.profile:
        print(f"  daemon log: {work / 'daemon.log'}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if args.profile:
        print(f"  profile: {args.profile} (python -m pstats {args.profile})")
    return Outcome(tree, measured, lat, scrapes)


def side_by_side(outcomes: list[Outcome]) -> None:
    print(f"\n{'':24}" + "".join(f"{o.tree:>20}" for o in outcomes))
    rows: list[tuple[str, Callable[[Outcome], str]]] = [
        ("CPU, % of one core", lambda o: f"{o.measured.cpu / o.measured.window * 100:.2f}"),
        ("peak RSS, MB", lambda o: f"{o.measured.peak_kb / 1024:.1f}"),
        ("latency p50, ms", lambda o: _latency(o, 50)),
        ("latency p99, ms", lambda o: _latency(o, 99)),
        (
            "/metrics median, ms",
            lambda o: (
                f"{statistics.median(o.scrapes.seconds) * 1000:.0f}" if o.scrapes.seconds else "-"
            ),
        ),
        ("/metrics series", lambda o: f"{o.scrapes.series}" if o.scrapes.seconds else "-"),
    ]
    for label, cell in rows:
        print(f"  {label:22}" + "".join(f"{cell(o):>20}" for o in outcomes))


def _latency(outcome: Outcome, q: float) -> str:
    samples = outcome.lat.samples
    return f"{percentile([s * 1000 for s in samples], q):.2f}" if samples else "-"


async def run(args: argparse.Namespace) -> int:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="balwatch-baseline-") as exported:
        if args.baseline:
            source = export_tree(args.baseline, Path(exported))
            outcomes.append(await run_tree(args, f"baseline {args.baseline}", source))
        outcomes.append(await run_tree(args, "working tree", None))
    if len(outcomes) > 1:
        side_by_side(outcomes)
    return 0 if all(o.measured.code == 0 for o in outcomes) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000, help="spread over four sources")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument(
        "--change-every", type=float, default=0.25, help="seconds between balance changes"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log)")
    parser.add_argument(
        "--profile", metavar="FILE", help="run the daemon under cProfile, stats to FILE"
    )
    parser.add_argument(
        "--scrape", type=float, default=15.0, help="seconds between /metrics scrapes; 0: none"
    )
    parser.add_argument(
        "--baseline", metavar="REV", help="measure git revision REV first, in the same run"
    )
    args = parser.parse_args()
    if args.accounts < 4:
        parser.error("--accounts must be at least 4 (one per source)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
