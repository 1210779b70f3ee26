"""Side by side: balwatch's Bitso poller against a ccxt ``fetch_balance`` loop, CPU per poll;
balwatch's own ccxt source in the same run; and the daemon's memory with a ccxt account.

Both poll the same simulated Bitso accounts (``--accounts``, 500 by default, ``--assets``
currencies each) the same number of times (``--polls`` per side), every account once per
round, a round's polls concurrent (``asyncio.gather``), each side over one shared aiohttp
session made by ``balwatch.adapters.http.new_session``. The simulator runs in a subprocess
(``balwatch simulate``), so only the client's CPU is counted: ``time.process_time()`` around
each phase, after a warm-up round. Phases alternate (balwatch, ccxt, balwatch, ...) for
``--repeat`` rounds of measurement; the median of each side is reported.

* balwatch: ``poll_account`` over a ``BitsoAdapter`` per account: signing with the
  process-wide nonce source, the request, status and error mapping, JSON with Decimals,
  ``parse_balances`` into ``Balance`` rows.
* ccxt: ``ccxt.async_support.bitso(...).fetch_balance()`` per account, one exchange object
  per account (ccxt keeps one key per object), ``enableRateLimit`` off (the simulator's
  limit is lifted for the run; balwatch's limiter is not used either).
* balwatch ccxt source: ``poll_account`` over a ``CcxtAdapter`` (``exchange: ccxt``,
  ``options: {id: bitso}``) per account: the same ccxt code as the ccxt side, plus what
  balwatch adds around it (its JSON parser keeping numbers as text, error mapping, exact
  Decimal rows). Its difference to the ccxt side is balwatch's overhead around ccxt. ccxt's
  limiter is off here as on the ccxt side (the run polls far faster than any limit; the
  limiter would only wait), which takes one private attribute.
* floor (for scale, not a competitor): the signed GET and ``json.loads`` alone.

Memory (``--memory``, on by default): ``balwatch run`` as a process against the same
simulator, once with one Bitso account and once with one more ``exchange: ccxt`` account
(ccxt's bitso), each measured (VmRSS) once ready, after its first poll round.

How ccxt is pointed at the simulator, with its own signing untouched:

* ``urls["api"]["rest"] = <simulator>/api``: ccxt then signs ``/api/v3/balance`` exactly as it
  signs for bitso.com (HMAC-SHA256 of nonce + method + path, ``Authorization: Bitso
  key:nonce:signature``), which the simulator verifies with balwatch's own ``sign``. ccxt's
  nonce is its per-object ``incrementing_nonce`` in milliseconds, strictly increasing per key
  as the simulator demands (phases are separated so the clients' nonces never cross).
  balwatch's ccxt source points ccxt there the way users do: ``base_url``.
* ``markets = {}`` before the first call: ``fetch_balance`` loads markets only while
  ``markets`` is None; ``parse_balance`` does not need markets (currency codes fall back to
  the upper-cased ids). balwatch's ccxt source does the same by default (``load_markets``).

Target (issue 6): balwatch uses at most a third of ccxt's CPU per poll.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/vs_ccxt.py [--accounts 500] [--polls 10000] [--assets 40] [--no-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/brokers.py: the test suite's free_port

from balwatch.adapters.base import AccountSpec, NoOptions  # noqa: E402
from balwatch.adapters.bitso import BALANCE_PATH, NONCES, BitsoAdapter, authorization  # noqa: E402
from balwatch.adapters.ccxtsource import CcxtAdapter, CcxtOptions  # noqa: E402
from balwatch.adapters.http import new_session  # noqa: E402
from balwatch.config.model import DefaultsConfig  # noqa: E402
from balwatch.poll import poll_all  # noqa: E402
from balwatch.secret import Secret  # noqa: E402
from tests.brokers import free_port  # noqa: E402

TARGET_RATIO: Final = 1 / 3
SIDES: Final = ("balwatch", "ccxt", "balwatch-ccxt", "floor")
ASSET_CODES: Final = [f"C{i:03d}" for i in range(1000)]

try:
    import ccxt.async_support as ccxt_async  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # pragma: no cover - the bench extra is not installed
    ccxt_async = None


def credentials(index: int) -> tuple[str, str]:
    return f"bench-key-{index:04d}", f"bench-secret-{index:04d}"


def scenario(accounts: int, assets: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)

    def amount() -> str:
        return f"{rng.randint(0, 10**9)}.{rng.randint(0, 10**8):08d}"

    entries = []
    for index in range(accounts):
        key, secret = credentials(index)
        balances = {
            code: {"available": amount(), "locked": amount(), "pending_deposit": amount()}
            for code in ASSET_CODES[:assets]
        }
        entries.append(
            {
                "name": f"bitso-{index:04d}",
                "exchange": "bitso",
                "api_key": key,
                "api_secret": secret,
                "balances": balances,
            }
        )
    # The run polls far faster than Bitso's 300/min per key: lift the simulated limit.
    return {"accounts": entries, "rate_limits": {"bitso": [10**9, 60]}}


class SimulatorProcess:
    """``balwatch simulate`` in a subprocess, so its CPU is not the client's."""

    def __init__(self, directory: Path, accounts: int, assets: int) -> None:
        self.path = directory / "scenario.yaml"
        self.path.write_text(yaml.safe_dump(scenario(accounts, assets)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SimulatorProcess:
        command = [sys.executable, "-m", "balwatch", "simulate", "--scenario", str(self.path)]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the simulator did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


Round = Callable[[], Awaitable[int]]  # one poll of every account; returns the failures


async def measure(run_round: Round, rounds: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, failed polls) of ``rounds`` rounds, after one warm-up."""
    failures = await run_round()
    if failures:
        raise RuntimeError(f"{failures} polls failed in the warm-up round")
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        failures += await run_round()
    return time.process_time() - cpu, time.perf_counter() - wall, failures


def balwatch_round(url: str, accounts: int, session: aiohttp.ClientSession) -> Round:
    adapters = []
    for index in range(accounts):
        key, secret = credentials(index)
        spec = AccountSpec(
            name=f"bitso-{index:04d}",
            base_url=url,
            timeout=30.0,
            credentials={"api_key": Secret(key), "api_secret": Secret(secret)},
            options=NoOptions(),
            max_response_size=DefaultsConfig().max_response_size,
        )
        adapters.append(BitsoAdapter(spec, session))

    async def run_round() -> int:
        results = await poll_all(adapters)
        return sum(not result.ok for result in results)

    return run_round


def balwatch_ccxt_round(url: str, accounts: int, session: aiohttp.ClientSession) -> Round:
    adapters = []
    for index in range(accounts):
        key, secret = credentials(index)
        spec = AccountSpec(
            name=f"bitso-{index:04d}",
            base_url=url,
            timeout=30.0,
            credentials={"api_key": Secret(key), "api_secret": Secret(secret)},
            options=CcxtOptions(id="bitso"),
        )
        adapter = CcxtAdapter(spec, session)
        # As on the ccxt side: no limiter (see the module docstring).
        adapter._exchange, adapter._shared = adapter._build()
        adapter._exchange.enableRateLimit = False
        adapters.append(adapter)

    async def run_round() -> int:
        results = await poll_all(adapters)
        failed = [r.error for r in results if r.error is not None]
        if failed:
            print(f"    balwatch ccxt: {len(failed)} failed, e.g. {failed[0]}", file=sys.stderr)
        return len(failed)

    return run_round


def ccxt_round(url: str, accounts: int, session: aiohttp.ClientSession) -> tuple[Round, list[Any]]:
    assert ccxt_async is not None
    exchanges = []
    for index in range(accounts):
        key, secret = credentials(index)
        exchange = ccxt_async.bitso(
            {"apiKey": key, "secret": secret, "session": session, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"rest": f"{url}/api"}
        exchange.markets = {}  # fetch_balance loads markets only while this is None
        exchanges.append(exchange)

    async def run_round() -> int:
        results = await asyncio.gather(
            *(exchange.fetch_balance() for exchange in exchanges), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            print(f"    ccxt: {len(failed)} failed, e.g. {failed[0]!r:.300}", file=sys.stderr)
        return len(failed)

    return run_round, exchanges


def floor_round(url: str, accounts: int, session: aiohttp.ClientSession) -> Round:
    """A signed GET and json.loads per account: what any client must spend at least."""
    keys = [tuple(Secret(part) for part in credentials(index)) for index in range(accounts)]

    async def one(key: Secret, secret: Secret) -> int:
        nonce = NONCES.next(key.fingerprint())
        headers = {"Authorization": authorization(key, secret, nonce, "GET", BALANCE_PATH)}
        async with session.get(url + BALANCE_PATH, headers=headers) as resp:
            body = json.loads(await resp.read(), parse_float=Decimal)
            return 0 if resp.status == 200 and body.get("success") is True else 1

    async def run_round() -> int:
        return sum(await asyncio.gather(*(one(key, secret) for key, secret in keys)))

    return run_round


async def run(args: argparse.Namespace, url: str) -> dict[str, list[tuple[float, float, int]]]:
    rounds = max(1, args.polls // args.accounts)
    figures: dict[str, list[tuple[float, float, int]]] = {name: [] for name in SIDES}
    async with (
        new_session() as ours,
        new_session() as theirs,
        new_session() as bare,
        new_session() as wrapped,
    ):
        sides: dict[str, Round] = {
            "balwatch": balwatch_round(url, args.accounts, ours),
            "floor": floor_round(url, args.accounts, bare),
        }
        exchanges: list[Any] = []
        if ccxt_async is not None:
            sides["ccxt"], exchanges = ccxt_round(url, args.accounts, theirs)
            sides["balwatch-ccxt"] = balwatch_ccxt_round(url, args.accounts, wrapped)
        try:
            for _ in range(args.repeat):
                for name in SIDES:
                    if name in sides:
                        figures[name].append(await measure(sides[name], rounds))
                        await asyncio.sleep(0.05)  # nonces are milliseconds: keep sides apart
        finally:
            # The session is shared and closed by new_session's owner; ccxt frees the rest.
            await asyncio.gather(*(exchange.close() for exchange in exchanges))
    return figures


def daemon_memory(directory: Path, url: str) -> tuple[int, int]:
    """VmRSS (KiB) of ``balwatch run`` once ready: one Bitso account; then one ccxt more."""
    bitso = (
        f"  - {{name: bitso-native, exchange: bitso, base_url: '{url}',\n"
        "     credentials: {api_key: bench-key-0000, api_secret: bench-secret-0000}}\n"
    )
    via_ccxt = (
        f"  - {{name: bitso-ccxt, exchange: ccxt, base_url: '{url}', options: {{id: bitso}},\n"
        "     credentials: {api_key: bench-key-0001, api_secret: bench-secret-0001}}\n"
    )
    return rss_when_ready(directory / "plain", bitso), rss_when_ready(
        directory / "ccxt", bitso + via_ccxt
    )


def rss_when_ready(directory: Path, accounts: str) -> int:
    directory.mkdir()
    port = free_port()
    config = directory / "balwatch.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir: {directory / "state"}
            rules: []
            http: {{listen: "127.0.0.1:{port}"}}
            log: {{format: json, level: error}}
            accounts:
            """
        )
        + accounts
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "balwatch", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"balwatch run exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("balwatch run did not become ready")
        time.sleep(1.0)  # let the first round's garbage settle
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])
    finally:
        process.terminate()
        process.wait(10)


def per_thousand(samples: list[tuple[float, float, int]], polls: int) -> tuple[float, float]:
    cpu = statistics.median(cpu for cpu, _, _ in samples)
    wall = statistics.median(wall for _, wall, _ in samples)
    return cpu / polls * 1000, polls / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--polls", type=int, default=10_000, help="per side and repeat")
    parser.add_argument("--assets", type=int, default=40, help="currencies per account")
    parser.add_argument("--repeat", type=int, default=3, help="alternating measurements")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the daemon's RSS with and without a ccxt account",
    )
    args = parser.parse_args()
    polls = max(1, args.polls // args.accounts) * args.accounts
    with (
        tempfile.TemporaryDirectory(prefix="balwatch-vs-ccxt-") as tmp,
        SimulatorProcess(Path(tmp), args.accounts, args.assets) as sim,
    ):
        figures = asyncio.run(run(args, sim.url))
        memory = daemon_memory(Path(tmp), sim.url) if args.memory and ccxt_async else None
    print(
        f"{args.accounts} simulated Bitso accounts, {args.assets} currencies each; "
        f"{polls:,} polls per side, median of {args.repeat}; simulator in its own process"
    )
    failed = {name: sum(f for _, _, f in samples) for name, samples in figures.items()}
    results = {}
    for name, label in (
        ("balwatch", "balwatch poll_account"),
        ("ccxt", "ccxt fetch_balance"),
        ("balwatch-ccxt", "balwatch ccxt source"),
        ("floor", "floor: signed GET + json"),
    ):
        if not figures[name]:
            print(f"  {label:26s} not run (pip install -e '.[bench]' for ccxt)")
            continue
        cpu, rate = per_thousand(figures[name], polls)
        results[name] = cpu
        print(
            f"  {label:26s} {cpu:6.3f} CPU s per 1,000 polls  {rate:7,.0f} polls/s wall  "
            f"{failed[name]} failed"
        )
    if any(failed.values()):
        print("FAILED polls: the comparison is void")
        return 1
    if "ccxt" in results:
        ratio = results["balwatch"] / results["ccxt"]
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        print(
            f"balwatch / ccxt CPU per poll = {ratio:.2f} (ccxt uses {1 / ratio:.1f}x); "
            f"{verdict} the <= 1/3 target"
        )
        above = results["balwatch"] - results["floor"]
        print(
            f"above the floor: balwatch {above:.3f}, ccxt {results['ccxt'] - results['floor']:.3f}"
            " CPU s per 1,000 polls"
        )
        overhead = results["balwatch-ccxt"] - results["ccxt"]
        print(
            f"balwatch's ccxt source around ccxt: {overhead:+.3f} CPU s per 1,000 polls "
            f"({overhead / results['ccxt']:+.0%} of ccxt's own)"
        )
    if memory is not None:
        without, with_ccxt = memory
        print(
            f"daemon RSS once ready: {without / 1024:.1f} MiB with one Bitso account, "
            f"{with_ccxt / 1024:.1f} MiB with one ccxt account more "
            f"(+{(with_ccxt - without) / 1024:.1f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
