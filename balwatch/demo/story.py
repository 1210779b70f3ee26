"""``balwatch demo``: simulated exchanges, the daemon and a scripted story, printed live.

The story drains a balance, queues a large withdrawal, locks funds for AML, drops a
balance suddenly and takes a source down, which the person on call silences for the
outage, then puts everything back. Each alert is printed as it fires and resolves (a
silenced one says so: no sink hears of it); with a broker on localhost:1883 they also go
to MQTT.

``speed`` plays the story faster (the tests run it at 4): the story's steps, the poll
interval, the daemon's tick and its clock, which times the rules' ``for``, windows and
``age``, all run that many times faster, so the same alerts fire and resolve sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

import aiomqtt

from balwatch.alert import Alert
from balwatch.daemon import Daemon, capture_signals
from balwatch.rules.engine import TICK_SECONDS
from balwatch.silence import new_silence
from balwatch.simulator.scenario import load_scenario
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimState
from balwatch.systemd import Notifier

Change = Callable[[SimState], None]
MQTT_PORT = 1883


def _set(account: str, asset: str, **fields: str) -> Change:
    def change(state: SimState) -> None:
        sim = state.accounts[account]
        venue = next(v for v, assets in sim.balances.items() if asset in assets)
        sim.balances[venue][asset].update(fields)

    return change


def _down(account: str) -> Change:
    def change(state: SimState) -> None:
        state.accounts[account].faults.append(Fault(FaultKind.STATUS, times=None, status=503))

    return change


def _up(account: str) -> Change:
    def change(state: SimState) -> None:
        state.accounts[account].faults.clear()

    return change


def _all(*changes: Change) -> Change:
    def change(state: SimState) -> None:
        for each in changes:
            each(state)

    return change


@dataclass(frozen=True, slots=True)
class Silencing:
    """A step of the person on call: a silence, as ``balwatch silence add`` makes one."""

    matchers: tuple[str, ...]
    comment: str
    hours: float = 1.0


# (seconds after the first poll round, what happens, the change)
STORY: tuple[tuple[float, str, Change | Silencing], ...] = (
    (
        2,
        "bitso-treasury spends USDT down to 3,000",
        _set("bitso-treasury", "USDT", total="4000.00", available="3000.00"),
    ),
    (
        5,
        "bitso-treasury queues a 150,000 MXN withdrawal",
        _set("bitso-treasury", "MXN", pending_withdrawal="150000.00"),
    ),
    (
        8,
        "kuna-custody: 2,500 USDT frozen by an AML check",
        _set("kuna-custody", "USDT", aml_locked="2500.00"),
    ),
    (
        11,
        "coinapi-ems: 40% of the BTC on BINANCESPOT vanishes",
        _set("coinapi-ems", "BTC", total="2.1", available="1.7"),
    ),
    (14, "coinw-spot stops answering (HTTP 503)", _down("coinw-spot")),
    (
        16,
        "on call knows: coinw is down for maintenance, and silences coinw-spot",
        Silencing(("account=coinw-spot",), "coinw maintenance"),
    ),
    (
        24,
        "everything recovers: top-up, withdrawal done, AML cleared, coinw back",
        _all(
            _set("bitso-treasury", "USDT", total="25000.00", available="24000.00"),
            _set("bitso-treasury", "MXN", pending_withdrawal="0"),
            _set("kuna-custody", "USDT", aml_locked="0"),
            _up("coinw-spot"),
        ),
    ),
)
END_AFTER = 38.0  # the last recovery may wait out one backoff (<= 10 intervals)


def _demo_file(name: str) -> Path:
    return Path(str(resources.files("balwatch.demo").joinpath(name)))


async def _broker_answers(port: int = MQTT_PORT) -> bool:
    """Whether an MQTT broker on localhost takes an anonymous connection: something that
    only accepts TCP, or refuses us, would keep the daemon from ever getting ready."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, timeout=2.0):
            return True
    except (aiomqtt.MqttError, OSError, TimeoutError):
        return False


def _config(sim_url: str, state_dir: Path, mqtt_port: int | None, speed: float) -> str:
    text = _demo_file("balwatch.yaml").read_text().replace("${SIM_URL}", sim_url)
    text += (
        f"rules: [{_demo_file('rules.yaml')}]\n"
        f"state_dir: {state_dir}\n"
        f"defaults: {{poll_interval: {round(1000 / speed)}ms, timeout: 2s}}\n"
        "log: {format: console, level: error}\n"
    )
    if mqtt_port is not None:
        text += (
            "sinks:\n"
            f"  - {{name: local-mqtt, type: mqtt, url: 'mqtt://127.0.0.1:{mqtt_port}', "
            "topic_prefix: balwatch-demo}\n"
        )
    return text


def _fast_clock(speed: float) -> Callable[[], float]:
    """Wall time from now on, running ``speed`` times faster."""
    start = time.time()
    return lambda: start + (time.time() - start) * speed


class _Printer:
    """Prints with the story's time: the same at any speed."""

    def __init__(self, out: TextIO, start: float, speed: float) -> None:
        self.out = out
        self.start = start
        self.speed = speed
        self.daemon: Daemon | None = None

    def line(self, text: str) -> None:
        at = (time.monotonic() - self.start) * self.speed
        print(f"[{at:5.1f}s] {text}", file=self.out, flush=True)

    def alerts(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            mark = {"firing": "FIRING  ", "repeat": "REPEAT  ", "resolved": "RESOLVED"}
            text = f"{mark[alert.event]} {alert.severity:8} {alert.rule}: {alert.summary}"
            silences = [] if self.daemon is None else self.daemon.silenced_by(alert)
            if silences:
                text += f" (silenced by {', '.join(silences)}: no sink notified)"
            self.line(text)


async def run_demo(out: TextIO, *, speed: float = 1.0, mqtt_port: int = MQTT_PORT) -> int:
    """Play the story; alerts go to MQTT too when a broker on localhost:``mqtt_port`` takes
    an anonymous client."""
    state = load_scenario(_demo_file("scenario.yaml")).build()
    mqtt = await _broker_answers(mqtt_port)
    printer = _Printer(out, time.monotonic(), speed)
    with tempfile.TemporaryDirectory(prefix="balwatch-demo-") as tmp:
        async with Simulator(state) as sim:
            config = Path(tmp) / "balwatch.yaml"
            state_dir = Path(tmp) / "state"
            config.write_text(_config(sim.url, state_dir, mqtt_port if mqtt else None, speed))
            daemon = Daemon(
                config,
                clock=_fast_clock(speed),
                tick_seconds=TICK_SECONDS / speed,
                on_alerts=printer.alerts,
                notifier=Notifier(None),
                configure_logs=True,
            )
            printer.daemon = daemon
            printer.line(f"simulated exchanges on {sim.url}: bitso, coinapi, kunacore, coinw")
            printer.line(
                "alerts also go to MQTT, topics balwatch-demo/#"
                if mqtt
                else f"no MQTT broker on localhost:{mqtt_port}: alerts are printed here only"
            )
            with capture_signals(daemon):  # Ctrl-C ends the story early
                running = asyncio.create_task(daemon.run())
                started = asyncio.create_task(daemon.started.wait())
                await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
                if running.done():
                    return running.result()
                printer.line("first poll round done; the story begins")
                zero = time.monotonic()
                for at, what, change in STORY:
                    if await _sleep_until(daemon, zero + at / speed):
                        break
                    printer.line(f"story: {what}")
                    if isinstance(change, Silencing):
                        await _silence(daemon, change, printer)
                    else:
                        change(state)
                await _sleep_until(daemon, zero + END_AFTER / speed)
                daemon.stop()
                code = await running
            printer.line("demo over; `balwatch simulate` and `balwatch run` do this for real")
            return code


async def _silence(daemon: Daemon, step: Silencing, printer: _Printer) -> None:
    """Add the silence as the HTTP API would, and say what it does."""
    now = daemon.now()
    silence = new_silence(
        step.matchers,
        starts_at=now,
        ends_at=now + step.hours * 3600,
        author="on-call",
        comment=step.comment,
        now=now,
    )
    await daemon.add_silence(silence)
    printer.line(
        f"silence {silence.id} for {' '.join(step.matchers)}, {step.hours:g}h: its alerts are "
        "still evaluated and listed, no sink is told (`balwatch silence list` shows it)"
    )


async def _sleep_until(daemon: Daemon, deadline: float) -> bool:
    """Wait for ``deadline`` (monotonic); True if the daemon was stopped (Ctrl-C) first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(daemon.stopping.wait(), max(0.0, deadline - time.monotonic()))
    return daemon.stopping.is_set()
