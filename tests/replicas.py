"""Replicas of ``balwatch run`` on one PostgreSQL, and what a drill needs to watch them.

:class:`Replicas` writes one config for all of them (each replica's ``instance``, HTTP port
and DSN come from its environment through ``${VAR}`` references, so the file is the one an
operator would deploy everywhere) and runs each replica as a child process that a test can
:meth:`~Replica.kill` (SIGKILL), :meth:`~Replica.pause` (SIGSTOP), :meth:`~Replica.resume`
(SIGCONT), :meth:`~Replica.terminate` (SIGTERM) and start again. A replica's DSN may point
at a :class:`~tests.tcpproxy.TcpProxy` instead of the server, to cut it off alone.

The accounts are served by the project's simulator in the test's own process
(:class:`PollWatch` stamps every balance request, so a test waits for "the first poll of
this account after that moment"), and every alert is observed where people get it: a real
Mosquitto (``alerts/#`` at QoS 1) and a real webhook receiver (:class:`AlertWatch`).
Which replica owns what is read from each replica's ``/api/cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from balwatch.simulator.state import SimAccount, SimState
from tests.brokers import Subscriber, free_port, subscribe
from tests.commands import Process
from tests.webhooks import WebhookReceiver

WAIT = 30.0
ALERT_TOPICS = "balwatch/alerts/#"

# The drills' one rule: an account's USDT below 1,000 fires at once, back above resolves.
RULES = """\
rules:
  - name: low-usdt
    select: {assets: [USDT]}
    when: available < 1000
    for: 0s
    severity: critical
    summary: "{account}: only {available} USDT"
"""
HIGH = "5000"
LOW = "10"


def sim_account(name: str) -> SimAccount:
    """A Bitso account with its own credential (so it gets a lease key of its own)."""
    return SimAccount(
        name,
        "bitso",
        api_key=f"{name}-key",
        api_secret=f"{name}-secret",
        balances={"bitso": {"USDT": usdt(HIGH)}},
    )


def usdt(available: str) -> dict[str, str]:
    return {"total": str(int(available) + 100), "available": available, "locked": "100"}


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Until ``predicate()`` holds, looked at every 50 ms (for what has no event to wait on:
    a child's log lines); AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


class PollWatch(SimState):
    """The simulator's state, stamping each request's arrival (``time.monotonic()``)."""

    def __init__(self, accounts: list[SimAccount]) -> None:
        super().__init__(accounts)
        self.polls: dict[str, list[float]] = {a.name: [] for a in accounts}
        self._news = asyncio.Event()
        # account -> called once, as its next request arrives, before it is answered
        self.on_request: dict[str, Callable[[], None]] = {}

    def record(self, account: SimAccount) -> None:
        super().record(account)
        self.polls[account.name].append(time.monotonic())
        self._news.set()
        hook = self.on_request.pop(account.name, None)
        if hook is not None:
            hook()

    def set_usdt(self, account: str, available: str) -> None:
        """Change the balance the next poll sees (no await: in effect at once)."""
        self.accounts[account].balances["bitso"]["USDT"] = usdt(available)

    async def poll_after(self, account: str, moment: float, timeout: float = WAIT) -> float:
        """When ``account`` was first polled after ``moment``; waits for it."""
        async with asyncio.timeout(timeout):
            while True:
                later = [t for t in self.polls[account] if t > moment]
                if later:
                    return later[0]
                self._news.clear()
                await self._news.wait()


@dataclass(frozen=True, slots=True)
class Seen:
    """One alert document as received, where and when."""

    via: str  # "mqtt" or "webhook"
    doc: dict[str, Any]
    at: float  # time.monotonic() on arrival

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.doc["rule"], self.doc.get("account"), self.doc["event"])


class AlertWatch:
    """Every alert that reached the MQTT subscriber or the webhook receiver."""

    def __init__(self, subscriber: Subscriber, hook: WebhookReceiver) -> None:
        self.seen: list[Seen] = []
        self._subscriber = subscriber
        self._hook = hook
        self._hook_read = 0
        self._news = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            message = await self._subscriber.messages.get()
            self.seen.append(Seen("mqtt", _doc(message), time.monotonic()))
            self._news.set()

    def _collect_hook(self) -> None:
        for request in self._hook.requests[self._hook_read :]:
            self.seen.append(Seen("webhook", request.json(), request.at))
        self._hook_read = len(self._hook.requests)

    def docs(
        self, *, via: str = "mqtt", rule: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        """Alert documents received so far through ``via``, oldest first."""
        self._collect_hook()
        return [
            s.doc
            for s in self.seen
            if s.via == via
            and (rule is None or s.doc["rule"] == rule)
            and (account is None or s.doc.get("account") == account)
        ]

    async def event(self, account: str, event: str, *, after: float = 0.0) -> Seen:
        """The first ``event`` of the drill rule for ``account`` that reached the MQTT
        subscriber after ``after``; waits for it."""

        async def first() -> Seen:
            while True:
                for seen in self.seen:
                    doc = seen.doc
                    if (
                        seen.via == "mqtt"
                        and seen.at > after
                        and (doc.get("account"), doc["event"]) == (account, event)
                    ):
                        return seen
                self._news.clear()
                await self._news.wait()

        try:
            return await asyncio.wait_for(first(), WAIT)
        except TimeoutError:
            got = [(s.via, s.key, s.doc.get("instance")) for s in self.seen]
            raise AssertionError(f"no {event} of {account} in {WAIT}s; got {got}") from None

    async def settled(self) -> None:
        """Everything published so far reached us (a marker sent through the broker)."""
        # drain() returns what _read had not taken yet: later than everything in seen.
        for message in await self._subscriber.drain():
            self.seen.append(Seen("mqtt", _doc(message), time.monotonic()))
        self._news.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _doc(message: Any) -> dict[str, Any]:
    payload = message.payload
    assert isinstance(payload, bytes)
    data: dict[str, Any] = json.loads(payload)
    return data


@contextlib.asynccontextmanager
async def watching(broker_port: int, hook: WebhookReceiver) -> AsyncIterator[AlertWatch]:
    async with subscribe(broker_port, [ALERT_TOPICS]) as subscriber:
        watch = AlertWatch(subscriber, hook)
        watch.start()
        try:
            yield watch
        finally:
            await watch.stop()


class Replica:
    """One ``balwatch run`` process of the cluster; start it again after it ends."""

    def __init__(self, name: str, config: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.config = config
        self.http_port = free_port()
        self.env = dict(env)
        self.process: Process | None = None
        self.paused = False
        self.runs: list[Process] = []  # every run so far, the current one last

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.proc.returncode is None

    async def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        env = {
            **os.environ,
            **self.env,
            "BW_INSTANCE": self.name,
            "BW_HTTP_PORT": str(self.http_port),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "balwatch", "run", "-c", str(self.config),
            env=env, cwd=self.config.parent, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        process = Process(proc)
        process.readers = [
            asyncio.create_task(process._pump(proc.stdout, process.stdout)),
            asyncio.create_task(process._pump(proc.stderr, process.stderr)),
        ]
        self.process = process
        self.paused = False
        self.runs.append(process)

    async def kill(self) -> None:
        """SIGKILL: no release, no flush, no goodbye; the lease has to expire."""
        process = self._current()
        process.signal(signal.SIGKILL)
        await process.wait()
        self.paused = False

    async def terminate(self) -> int:
        """SIGTERM: a clean shutdown (releases its leases); its exit code."""
        process = self._current()
        if self.paused:
            self.resume()
        process.signal(signal.SIGTERM)
        return await process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes mid-whatever, its sockets stay open."""
        self._current().signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._current().signal(signal.SIGCONT)
        self.paused = False

    def _current(self) -> Process:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process

    def logs(self, event: str | None = None, *, all_runs: bool = True) -> list[dict[str, Any]]:
        """This replica's JSON log entries (of one ``event``), its earlier runs' first."""
        entries = []
        for process in self.runs if all_runs else self.runs[-1:]:
            for line in bytes(process.stderr).decode(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and (event is None or entry.get("event") == event):
                        entries.append(entry)
        return entries

    @property
    def output(self) -> str:
        return "".join(process.output for process in self.runs)

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=2)
        async with http.get(self.url + path, timeout=timeout) as response:
            return response.status, await response.json(content_type=None)

    async def cluster(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        """``/api/cluster`` of this replica, or None when it does not answer."""
        if not self.running or self.paused:
            return None
        try:
            status, body = await self.get(http, "/api/cluster")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None


def owned_accounts(cluster: Mapping[str, Any]) -> set[str]:
    """The accounts a replica's ``/api/cluster`` says it polls."""
    return set(cluster.get("accounts", ()))


@dataclass
class Replicas:
    """N replicas of one config (see the module's doc); ``async with`` stops them all."""

    directory: Path
    sim_url: str
    accounts: list[str]
    dsn: str
    mqtt_url: str
    hook_url: str
    count: int = 3
    poll_interval: float = 0.5
    lease_ttl: float = 3.0
    request_timeout: float = 2.0
    rules: str = RULES
    replicas: dict[str, Replica] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.directory / "balwatch.yaml"
        (self.directory / "rules").mkdir(exist_ok=True)
        (self.directory / "rules" / "drill.yaml").write_text(self.rules)
        self.config.write_text(self.config_text())
        for index in range(1, self.count + 1):
            self.add(f"replica-{index}")

    def config_text(self) -> str:
        accounts = "\n".join(
            f"  - {{name: {name}, exchange: bitso, base_url: '{self.sim_url}',"
            f" credentials: {{api_key: {name}-key, api_secret: {name}-secret}}}}"
            for name in self.accounts
        )
        return "\n".join(
            [
                # Each replica's own: its name, its HTTP port, its way to the database.
                "instance: ${BW_INSTANCE}",
                "state_dir: ${BW_STATE_DIR}",
                "state: {backend: postgres, dsn: '${BW_PG_DSN}', "
                f"lease_ttl: {self.lease_ttl}s}}",
                "http: {listen: '127.0.0.1:${BW_HTTP_PORT}'}",
                "log: {format: json, level: info}",
                "rules: ['rules/*.yaml']",
                f"defaults: {{poll_interval: {self.poll_interval}s, "
                f"timeout: {self.request_timeout}s}}",
                "sinks:",
                f"  - {{name: ops-mqtt, type: mqtt, url: '{self.mqtt_url}', qos: 1}}",
                f"  - {{name: ops-hook, type: webhook, url: '{self.hook_url}'}}",
                "accounts:",
                accounts,
                "",
            ]
        )

    def add(self, name: str, *, dsn: str | None = None) -> Replica:
        """A replica named ``name`` (not started); ``dsn`` instead of the shared one."""
        state_dir = self.directory / name
        state_dir.mkdir(exist_ok=True)
        env = {"BW_PG_DSN": dsn or self.dsn, "BW_STATE_DIR": str(state_dir)}
        replica = self.replicas[name] = Replica(name, self.config, env)
        return replica

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.running and not r.paused]

    async def start(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else list(self.replicas):
            await self.replicas[name].start()

    async def owners(self, http: aiohttp.ClientSession) -> dict[str, list[str]]:
        """account -> the live replicas whose ``/api/cluster`` says they poll it."""
        found: dict[str, list[str]] = {name: [] for name in self.accounts}
        for replica in self.live():
            doc = await replica.cluster(http)
            for account in owned_accounts(doc or {}):
                found.setdefault(account, []).append(replica.name)
        return found

    async def settled(
        self,
        http: aiohttp.ClientSession,
        *,
        among: Iterable[str] | None = None,
        timeout: float = WAIT,
        check: Callable[[dict[str, str]], bool] | None = None,
    ) -> dict[str, str]:
        """Wait until each account is owned by exactly one of ``among`` (default: the live
        replicas) and ``check`` (of account -> owner) holds; returns account -> owner."""
        deadline = time.monotonic() + timeout
        last: dict[str, list[str]] = {}
        while True:
            last = await self.owners(http)
            allowed = set(among) if among is not None else {r.name for r in self.live()}
            single = {a: o[0] for a, o in last.items() if len(o) == 1 and o[0] in allowed}
            if len(single) == len(self.accounts) and (check is None or check(single)):
                return single
            if time.monotonic() > deadline:
                raise AssertionError(f"ownership did not settle in {timeout}s: {last}")
            await asyncio.sleep(0.1)

    def check_exits(self) -> None:
        """Fail if a replica that should be running has exited."""
        for replica in self.replicas.values():
            process = replica.process
            code = None if process is None else process.proc.returncode
            if process is not None and code not in (None, 0, -signal.SIGKILL):
                raise AssertionError(
                    f"{replica.name} exited with {code}:\n{process.output[-4000:]}"
                )

    async def close(self) -> None:
        for replica in self.replicas.values():
            process = replica.process
            if process is None or process.proc.returncode is not None:
                continue
            if replica.paused:
                replica.resume()
            process.proc.kill()
            await process.proc.wait()
            await asyncio.gather(*process.readers, return_exceptions=True)

    async def __aenter__(self) -> Replicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
