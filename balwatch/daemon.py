"""``balwatch run``: wires pollers, the rule engine, the outbox and the sinks together.

    pollers -> PollResult -> engine -> alerts -> outbox (with the engine state) -> sinks

The daemon owns no logic of its own beyond the wiring: when to evaluate (each poll
result, and a tick for account-scope rules), when to persist, how to reload and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from balwatch import __version__, logs, redact
from balwatch.adapters.base import Adapter
from balwatch.adapters.http import new_session
from balwatch.alert import Alert
from balwatch.backoff import Backoff
from balwatch.config import Config
from balwatch.errors import ConfigError, ErrorKind
from balwatch.httpapi import HttpServer
from balwatch.latest import LatestBalances
from balwatch.loading import Loaded, load_all
from balwatch.metrics import Metrics
from balwatch.outbox.routing import route
from balwatch.outbox.store import DB_FILE, OutboxStore
from balwatch.outbox.worker import Outbox
from balwatch.poll import PollResult, make_adapter
from balwatch.ratelimit import LimiterRegistry, with_headroom
from balwatch.rules.engine import TICK_SECONDS, Engine
from balwatch.rules.load import matching_paths
from balwatch.scheduler import PollPlan, Scheduler
from balwatch.secret import Secret
from balwatch.selfalerts import SELF, SelfAlerts
from balwatch.sinks.base import Sink
from balwatch.sinks.registry import build_sink
from balwatch.statestore import (
    StateError,
    changes_writer,
    prepare,
    restore,
    state_lock,
    writer,
)
from balwatch.systemd import Notifier, run_watchdog

log = structlog.get_logger("balwatch.daemon")

# Non-urgent state (history samples, account liveness) is flushed this often.
FLUSH_SECONDS = 5.0
# How often rule files and the config are checked for changes.
WATCH_SECONDS = 2.0
# SIGTERM: how long deliveries may still go out before the process exits.
STOP_GRACE_SECONDS = 10.0

OnAlerts = Callable[[Sequence[Alert]], None]


@dataclass
class _Account:
    adapter: Adapter
    exchange: str


class StartError(Exception):
    """The daemon cannot start with this config: a listener, a directory, a certificate."""


class Daemon:
    """One run of the service. ``await Daemon(path).run()`` returns the exit code."""

    def __init__(
        self,
        config_path: Path,
        *,
        environ: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        on_alerts: OnAlerts | None = None,
        notifier: Notifier | None = None,
        configure_logs: bool = True,
    ) -> None:
        self.config_path = config_path
        self._environ = environ
        self._clock = clock
        self._on_alerts = on_alerts
        self._notifier = notifier or Notifier.from_env()
        self._configure_logs = configure_logs
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()  # first poll round done, sinks connected
        self._reload_requested = asyncio.Event()
        self.metrics = Metrics(__version__)
        self.latest = LatestBalances(clock=clock)
        self._self_alerts = SelfAlerts(clock)
        self._polled: set[str] = set()
        self._failing: set[str] = set()
        self._progress = time.monotonic()
        self._accounts: dict[str, _Account] = {}
        self._unpublished: list[Alert] = []  # alerts whose commit failed, retried each tick
        # Alerts waiting for the commit in flight to end; the next commit takes them all.
        self._queued: list[Alert] = []
        self._committing = asyncio.Lock()
        self._last_status = ""

    # --- start-up --------------------------------------------------------------------

    async def run(self) -> int:
        loaded = load_all(self.config_path, self._environ)  # ConfigError: the CLI reports it
        # The files as they were read: an edit during the rest of start-up is a change.
        watched = _signature(loaded)
        self.loaded = loaded
        config = loaded.config
        redact.install(config.secrets())
        if self._configure_logs:
            logs.configure(config.log.format, config.log.level)
        for problem in loaded.warnings:
            log.warning("config_warning", problem=str(problem))
        with state_lock(config.state_dir):  # StateError: another daemon has it
            return await self._serve(loaded, watched)

    async def _serve(self, loaded: Loaded, watched: _Signature) -> int:
        """Run until stopped, holding the state directory."""
        config = loaded.config
        now = self._clock()
        db = config.state_dir / DB_FILE
        engine = Engine(loaded.rules, clock=self._clock, account_labels=_labels(config))
        saved = await asyncio.to_thread(prepare, db, now - engine.history.retention)
        restored = engine.restore(saved.alerts, saved.accounts, now)
        restore(engine, saved, now)
        for account in config.accounts:
            engine.register_account(account.name, account.exchange, now)
        for gone in {a.account for a in saved.accounts} - {a.name for a in config.accounts}:
            restored += engine.forget_account(gone, now)
        self._self_alerts.restore(saved.self_alerts)
        restored += self._self_alerts.resolve("config_error", SELF)  # this config loaded
        configured = {a.name for a in config.accounts}
        for name in self._self_alerts.accounts("source_auth_failed"):
            if name not in configured:
                restored += self._self_alerts.resolve("source_auth_failed", name)
        self.engine = engine
        log.info(
            "state_restored",
            alerts=len(saved.alerts),
            accounts=len(saved.accounts),
            samples=len(saved.samples),
        )

        loop = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self.stopping.set),
            (signal.SIGINT, self.stopping.set),
            (signal.SIGHUP, self._reload_requested.set),
        ):
            loop.add_signal_handler(sig, handler)

        async with AsyncExitStack() as stack:
            self.sinks: list[Sink] = [
                await stack.enter_async_context(build_sink(s)) for s in config.sinks
            ]
            try:
                store = await OutboxStore.open(db)
                stack.push_async_callback(store.close)
                # Retries cap at 30 s: a sink that comes back is served within half a minute.
                self.outbox = Outbox(store, self.sinks, backoff=Backoff(base=1.0, cap=30.0))
                await self.outbox.start()
            except sqlite3.DatabaseError as exc:  # outbox tables too new, or corrupt
                raise StateError(f"{db}: cannot use the outbox ({exc})") from None
            stack.push_async_callback(self.outbox.stop)
            if config.http is not None:
                http = HttpServer(config.http.host, config.http.port, self, self.metrics.registry)
                try:
                    await stack.enter_async_context(http)
                except OSError as exc:  # port taken, unknown host: say which setting
                    where = f"{config.http.host}:{config.http.port}"
                    raise StartError(f"http.listen {where}: {exc.strerror or exc}") from None
            session = await stack.enter_async_context(new_session())
            self._session = session
            self._limiters = LimiterRegistry()
            await self._publish(restored)

            scheduler = await stack.enter_async_context(Scheduler(self._handle_result))
            self._scheduler = scheduler
            await scheduler.apply(self._plans(config))
            log.info(
                "started",
                accounts=len(config.accounts),
                rules=len(loaded.rules),
                sinks=len(config.sinks),
                state=str(db),
            )
            background = [
                asyncio.create_task(self._ticker(), name="tick"),
                asyncio.create_task(self._watch_files(watched), name="watch"),
                asyncio.create_task(self._reloader(), name="reload"),
                asyncio.create_task(
                    run_watchdog(self._notifier, lambda: self._progress, self.stopping),
                    name="watchdog",
                ),
            ]
            await self.stopping.wait()
            self._notifier.stopping()
            log.info("stopping")
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await scheduler.stop()
            # Alerts of pollers cancelled while they waited for, or were in, a commit.
            await self._publish([])
            await self._flush()
            if self._unpublished:
                log.error("stopped_with_uncommitted_alerts", alerts=len(self._unpublished))
            drained = await self.outbox.drain(STOP_GRACE_SECONDS)
            if not drained:
                log.warning("stopped_with_pending_deliveries", grace=STOP_GRACE_SECONDS)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    def _plans(self, config: Config) -> list[PollPlan]:
        """Poll plans; an account whose settings did not change keeps its adapter (tokens)."""
        accounts: dict[str, _Account] = {}
        plans = []
        for account in config.accounts:
            spec = config.account_spec(account)
            kept = self._accounts.get(account.name)
            if kept is None or kept.exchange != account.exchange or kept.adapter.account != spec:
                kept = _Account(
                    make_adapter(account.exchange, spec, self._session), account.exchange
                )
            accounts[account.name] = kept
            limit = account.adapter.rate_limit
            limiter = None
            if limit is not None:
                key = _credential_key(account.exchange, spec.credentials, account.name)
                limiter = self._limiters.get(key, with_headroom(limit))
            plans.append(PollPlan(kept.adapter, config.poll_interval(account), limiter))
        self._accounts = accounts
        return plans

    # --- the data path ---------------------------------------------------------------

    async def _handle_result(self, result: PollResult) -> None:
        now = self._clock()
        self._progress = time.monotonic()
        self.metrics.record_poll(result)
        self.latest.update(result)
        exchange = self._accounts[result.account].exchange
        if result.rows is not None:
            alerts = self.engine.observe(result.account, exchange, result.rows, now)
            self.metrics.record_evaluation("poll")
            self._failing.discard(result.account)
            alerts += self._self_alerts.resolve("source_auth_failed", result.account)
        else:
            alerts = self.engine.poll_failed(result.account, exchange, now)
            self.metrics.record_evaluation("poll_failed")
            self._failing.add(result.account)
            if result.error is not None and result.error.kind is ErrorKind.AUTH:
                alerts += self._self_alerts.fire(
                    "source_auth_failed",
                    result.account,
                    exchange,
                    f"{result.account}: {exchange} rejected the credentials; polling backs off",
                    "critical",
                )
        await self._publish(alerts)
        self._polled.add(result.account)
        self._check_ready()

    async def _publish(self, alerts: Sequence[Alert]) -> None:
        """Commit the alerts with the engine state that produced them, then hand them on.

        If the commit fails (disk full, I/O error), the alerts are kept in memory and
        retried with the next publish or tick: the engine has moved on, so dropping them
        would lose them for good.

        One commit at a time: pollers and the ticker publish concurrently, and two commits in
        flight could each fail and keep only their own alerts, or both carry the held ones
        (a firing delivered again after its resolve), or commit out of order. Alerts that
        arrive meanwhile wait and go, in order, with the next commit.
        """
        self._queued += alerts
        async with self._committing:
            batch = [*self._unpublished, *self._queued]
            self._queued = []
            try:
                await self._commit(batch)
            except asyncio.CancelledError:  # stop or reload cancelled the publisher
                self._unpublished = batch  # the final commit at stop takes them
                raise

    async def _commit(self, batch: list[Alert]) -> None:
        if not batch:
            return
        sinks = self.loaded.config.sinks
        items = [(doc, route(doc, sinks, a.notify)) for a in batch for doc in (a.to_json(),)]
        try:
            changed = {
                (a.fingerprint, a.rule): self.engine.state_for(a.account, a.venue, a.asset, a.rule)
                for a in batch
            }
            await self.outbox.enqueue_many(
                items,
                also=changes_writer(
                    ((fp, rule, st) for (fp, rule), st in changed.items()),
                    self._self_alerts.firing(),
                ),
            )
        except Exception:
            self._unpublished = batch
            self.metrics.record_state_write_failure("alerts")
            self.metrics.set_uncommitted(len(batch))
            log.exception("outbox_commit_failed", alerts=len(batch))
            return
        self._unpublished = []
        self.metrics.set_uncommitted(0)
        self.metrics.record_alerts(batch)
        self.metrics.set_active(*self.engine.counts())
        for alert in batch:
            log.info(
                "alert",
                transition=alert.event,
                rule=alert.rule,
                account=alert.account,
                asset=alert.asset,
                summary=alert.summary,
            )
        if self._on_alerts is not None:
            self._on_alerts(batch)

    async def _flush(self) -> None:
        """Write the engine state that no alert commit carried: pending timers, account
        liveness, new history samples. A failure is reported, never raised: a full or
        read-only disk must not stop polling and alerting."""
        history = self.engine.history.take_changes()
        try:
            await self.outbox.store.write(
                writer(self.engine.states(), self.engine.accounts(), history)
            )
        except Exception:
            self.engine.history.retake(history)  # a forgotten series must still leave the table
            self.metrics.record_state_write_failure("flush")
            log.exception("state_flush_failed")

    async def _ticker(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._progress = time.monotonic()
            await self._publish(self.engine.tick(self._clock()))
            self.metrics.record_evaluation("tick")
            self.metrics.set_active(*self.engine.counts())
            self.metrics.set_outbox(self.outbox.stats())
            status = self._status_line()
            if status != self._last_status:
                self._last_status = status
                self._notifier.status(status)
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                await self._flush()

    def _status_line(self) -> str:
        total = len(self._accounts)
        failing = len(self._failing)
        line = (
            f"{total - failing}/{total} accounts ok, {failing} failing, "
            f"{self.engine.counts()[1]} alerts firing"
        )
        if self._unpublished:
            line += f", {len(self._unpublished)} alerts held: state database not writable"
        return line

    def _check_ready(self) -> None:
        if self.started.is_set():
            return
        ok, _ = self.ready()
        if ok:
            self.started.set()
            self._notifier.ready(self._status_line())
            log.info("ready")

    # --- reload ----------------------------------------------------------------------

    async def _watch_files(self, seen: _Signature) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            current = _signature(self.loaded)
            if current != seen:
                seen = current
                log.info("config_changed")
                self._reload_requested.set()

    async def _reloader(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Load config and rules anew; on any error keep the running set and say so."""
        self._notifier.reloading()
        try:
            loaded = await asyncio.to_thread(load_all, self.config_path, self._environ)
        except Exception as exc:
            # A loader bug must not end reloading for good: reject the set like a bad one.
            self.metrics.record_reload(False)
            if isinstance(exc, ConfigError):
                for problem in exc.problems:
                    (log.warning if problem.severity == "warning" else log.error)(
                        "reload_rejected", problem=str(problem)
                    )
                # The alert names what rejected the set: an error, not a warning beside it.
                errors = [p for p in exc.problems if p.severity != "warning"] or exc.problems
                first = str(errors[0]) if errors else "unknown problem"
            else:
                log.exception("reload_failed")
                first = f"the files could not be loaded ({type(exc).__name__}; see the log)"
            await self._publish(
                self._self_alerts.fire(
                    "config_error",
                    SELF,
                    SELF,
                    f"config reload rejected, the last good rules keep running: {first}",
                    "critical",
                )
            )
            self._notifier.ready(self._status_line())
            return False
        old = self.loaded.config
        new = loaded.config
        # The redactor learns the new credentials, and keeps the old for polls in flight.
        redact.install((*old.secrets(), *new.secrets()))
        if self._configure_logs:
            logs.configure(new.log.format, new.log.level)
        if _restart_only(old) != _restart_only(new):
            log.warning("reload_needs_restart", changed="sinks, http or state_dir")
        now = self._clock()
        self.engine.set_account_labels(_labels(new))
        alerts = self.engine.replace_rules(loaded.rules, now)
        for gone in {a.name for a in old.accounts} - {a.name for a in new.accounts}:
            alerts += self.engine.forget_account(gone, now)
            alerts += self._self_alerts.resolve("source_auth_failed", gone)
            self.metrics.forget_account(gone)
            self.latest.forget(gone)
            self._polled.discard(gone)
            self._failing.discard(gone)
        for account in new.accounts:
            self.engine.register_account(account.name, account.exchange, now)
        # Keep sinks, http and state as they are; everything else follows the new files.
        self.loaded = loaded._replace(
            config=new.model_copy(
                update={"sinks": old.sinks, "http": old.http, "state_dir": old.state_dir}
            )
        )
        # Also when only defaults changed (interval, timeout): apply() restarts just the
        # pollers whose plan is different.
        await self._scheduler.apply(self._plans(self.loaded.config))
        alerts += self._self_alerts.resolve("config_error", SELF)
        await self._publish(alerts)
        self.metrics.record_reload(True)
        log.info("reloaded", rules=len(loaded.rules), accounts=len(new.accounts))
        self._notifier.ready(self._status_line())
        return True

    # --- StatusSource for the HTTP API -------------------------------------------------

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        waiting = set(self._accounts) - self._polled
        if waiting:
            reasons.append(f"first poll pending for {len(waiting)} accounts")
        down = [s.name for s in self.sinks if not s.connected()]
        if down:
            reasons.append(f"sinks not connected: {', '.join(down)}")
        return not reasons, reasons

    def alerts(self) -> list[dict[str, object]]:
        return [s.to_json() for s in (*self.engine.firing(), *self.engine.pending())]

    def balances(self) -> dict[str, object]:
        return self.latest.document()


def _labels(config: Config) -> dict[str, dict[str, str]]:
    return {account.name: dict(account.labels) for account in config.accounts}


def _credential_key(exchange: str, credentials: Mapping[str, Secret], account: str) -> str:
    """Accounts that share a key share its limit; keyless accounts are limited alone."""
    for name in ("api_key", "login"):
        secret = credentials.get(name)
        if secret is not None:
            return f"{exchange}:{secret.fingerprint()}"
    return f"{exchange}:account:{account}"


def _restart_only(config: Config) -> tuple[object, ...]:
    return (config.sinks, config.http, config.state_dir)


_Signature = tuple[tuple[str, int, int], ...]  # (file, mtime_ns, size) of each watched file


def _signature(loaded: Loaded) -> _Signature:
    """What a reload depends on: the files read, and what the rule globs match now."""
    names = set(loaded.files)
    for pattern in loaded.config.rules:
        names.update(matching_paths(pattern))
    out = []
    for name in sorted(names):
        with contextlib.suppress(OSError):
            st = os.stat(name)
            out.append((name, st.st_mtime_ns, st.st_size))
    return tuple(out)
