"""``balwatch run``: wires pollers, the rule engine, the outbox and the sinks together.

    pollers -> PollResult -> engine -> alerts -> publisher (state store) -> outbox -> sinks

The daemon owns no logic of its own beyond the wiring: when to evaluate (each poll
result, and a tick for account-scope rules), when to persist, how to reload and stop.
A run is three steps, :meth:`Daemon.start`, :meth:`Daemon.serve` and
:meth:`Daemon.shutdown` (:meth:`Daemon.run` does all three). Signals belong to the caller:
:func:`capture_signals` maps SIGTERM/SIGINT to :meth:`Daemon.stop` and SIGHUP to
:meth:`Daemon.request_reload` for as long as the caller runs the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import structlog

from balwatch import __version__, logs, redact
from balwatch.adapters.base import Adapter
from balwatch.adapters.http import new_session
from balwatch.alert import Alert
from balwatch.backoff import Backoff
from balwatch.burst import Burst
from balwatch.cluster.keys import credential_key, lease_keys
from balwatch.cluster.membership import Membership
from balwatch.config import AccountConfig, Config
from balwatch.config.yamlsource import out_of_descriptors
from balwatch.errors import ConfigError, ErrorKind
from balwatch.httpapi import HttpServer
from balwatch.latest import LatestBalances
from balwatch.loading import Loaded, load_all
from balwatch.matchers import alert_fields
from balwatch.metrics import Metrics
from balwatch.muting import Muting
from balwatch.outbox.worker import Outbox
from balwatch.poll import PollResult, make_adapter, priced
from balwatch.prices.book import PriceBook
from balwatch.prices.feeds import PriceFeeds
from balwatch.publisher import AlertPublisher, OnAlerts
from balwatch.ratelimit import LimiterRegistry, with_headroom
from balwatch.rules.engine import TICK_SECONDS, Engine
from balwatch.rules.groups import GROUP_SERIES
from balwatch.rules.load import matching_paths
from balwatch.scheduler import PollPlan, Scheduler
from balwatch.selfalerts import SELF, SelfAlerts
from balwatch.silence import RETENTION, Silence
from balwatch.sink import Sink
from balwatch.sinks.registry import build_sink
from balwatch.state import postgres_store, state_store
from balwatch.state.base import (
    OutboxEntry,
    Retried,
    SavedState,
    Scope,
    StateStore,
    Unreachable,
)
from balwatch.systemd import Notifier, run_watchdog
from balwatch.topiclayout import upgrade_topic_layout

log = structlog.get_logger("balwatch.daemon")

# Non-urgent state (history samples, account liveness) is flushed this often.
FLUSH_SECONDS = 5.0
# How often rule files and the config are checked for changes.
WATCH_SECONDS = 2.0
# SIGTERM: how long deliveries may still go out before the process exits.
STOP_GRACE_SECONDS = 10.0
# Silences that ended longer ago than silence.RETENTION are removed this often.
PRUNE_SECONDS = 3600.0
# Replicas: how often each worker looks for deliveries whose claim lapsed (a replica died
# mid-delivery), so another replica's rows go out within a claim ttl and this.
RESYNC_SECONDS = 3.0
# Replicas: PostgreSQL not answering at start is tried again after 1, 2, 4... s, up to this.
OPEN_RETRY_MAX = 30.0


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
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.config_path = config_path
        self._tick_seconds = tick_seconds  # the demo, played faster, ticks faster too
        self._environ = environ
        self._clock = clock
        self._on_alerts = on_alerts
        self._notifier = notifier or Notifier.from_env()
        self._configure_logs = configure_logs
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()  # first poll round done, sinks connected
        self._reload_requested = asyncio.Event()
        self.latest = LatestBalances(clock=clock)
        self.metrics = Metrics(__version__, balances=self.latest)
        self.prices = PriceBook(None, clock=clock)
        self._self_alerts = SelfAlerts(clock)
        self._polled: set[str] = set()
        self._failing: set[str] = set()
        self._progress = time.monotonic()
        self._accounts: dict[str, _Account] = {}
        self._last_status = ""
        self._running: AsyncExitStack | None = None  # what start() opened, for shutdown()
        # Out of descriptors (a connection flood, a leak), the files cannot be read: that is
        # not a config error. Logged once per burst, looked at again later.
        self._unreadable = Burst(log, "config_read_deferred", "config_read_resumed")
        self._changes_unreadable = False  # the store's change counters: logged once a run
        # Replicas (state backend postgres): the accounts this one holds leases for; None
        # for a single daemon, which polls every account.
        self.cluster: Membership | None = None
        self._owned: set[str] | None = None
        # Held by whatever moves engine state between replicas or evaluates it on a tick,
        # so a hand-over never overlaps a tick's alerts of the accounts it hands over.
        self._turn = asyncio.Lock()
        self._owed: list[Alert] = []  # self-alerts resolved outside a commit: the next tick

    def stop(self) -> None:
        """Ask the daemon to stop: :meth:`serve` returns, :meth:`run` shuts down."""
        self.stopping.set()

    def request_reload(self) -> None:
        """Ask for a reload of the config and rules (as a change to the files does)."""
        self._reload_requested.set()

    async def run(self) -> int:
        """Start, serve until :meth:`stop`, shut down; returns the exit code.

        Start-up errors (ConfigError, StateError, StartError, OSError) are raised for the
        caller to report, with everything start-up opened closed again.
        """
        await self.start()
        try:
            await self.serve()
        finally:
            await self.shutdown()
        return 0

    # --- start-up --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the config, take the state store, connect the sinks, begin polling."""
        loaded = load_all(self.config_path, self._environ)  # ConfigError: the CLI reports it
        # The files as they were read: an edit during the rest of start-up is a change.
        self._watched = _signature(loaded)
        self.loaded = loaded
        config = loaded.config
        redact.install(config.secrets())
        if self._configure_logs:
            logs.configure(config.log.format, config.log.level)
        for problem in loaded.warnings:
            log.warning("config_warning", problem=str(problem))
        self.metrics.export_balances(config.metrics.balances)
        async with AsyncExitStack() as stack:
            # StateError: another daemon has it, or it is not balwatch's, or too new.
            replicas = postgres_store(config) if config.state.backend == "postgres" else None
            if replicas is not None:
                await self._open_when_reachable(replicas)
                stack.push_async_callback(replicas.close)
                store: StateStore = replicas
            else:
                store = await stack.enter_async_context(state_store(config))
            self.engine = Engine(loaded.rules, clock=self._clock, account_labels=_labels(config))
            since = self._clock() - self.engine.history.retention
            if replicas is not None:
                # A replica starts with no account: it loads each one as it gains its lease.
                self._owned = set()
                self.cluster = Membership(
                    replicas,
                    self,
                    lease_keys(config, loaded.rules),
                    ttl=config.state.lease_ttl,
                    address=config.external_url,
                    events=self.metrics,
                )
                saved = await store.load(since, Scope({}, {}))
            else:
                saved = await store.load(since)
            restored = self._restore(saved, config)
            self.store = store
            self.muting = Muting(
                self.engine, config.sinks, sources=self._self_sources, clock=self._clock
            )
            self.muting.configure(config)
            self.muting.adopt()
            await store.prune_silences(self._clock() - RETENTION)
            self._changes = await store.changes()
            self.muting.set_silences(await store.silences())
            replica = None if self.cluster is None else config.instance
            self.sinks: list[Sink] = [
                await stack.enter_async_context(build_sink(s, instance=replica))
                for s in config.sinks
            ]
            # Retries cap at 30 s: a sink that comes back is served within half a minute.
            self.outbox = Outbox(store, self.sinks, backoff=Backoff(base=1.0, cap=30.0))
            self.publisher = AlertPublisher(
                store=store,
                outbox=self.outbox,
                engine=self.engine,
                self_alerts=self._self_alerts,
                sinks=config.sinks,
                metrics=self.metrics,
                placement=(config.instance, config.external_url),
                on_alerts=self._on_alerts,
                muting=self.muting,
                cluster=self.cluster,
            )
            # Before the workers start and any alert is published (see the module).
            firing = [*self.engine.firing_alerts(), *self._self_alerts.firing()]
            await upgrade_topic_layout(store, config.sinks, saved, self.publisher.placed(firing))
            await self.outbox.start()
            stack.push_async_callback(self.outbox.stop)
            if config.http is not None:
                http = HttpServer(
                    config.http.host,
                    config.http.port,
                    self,
                    self.metrics.registry,
                    token=config.http.token,
                    max_connections=config.http.max_connections,
                    oncall=self,
                )
                try:
                    await stack.enter_async_context(http)
                except OSError as exc:  # port taken, unknown host: say which setting
                    where = f"{config.http.host}:{config.http.port}"
                    raise StartError(f"http.listen {where}: {exc.strerror or exc}") from None
            self._session = await stack.enter_async_context(new_session())
            self.prices.configure(config.prices)
            self._feeds = PriceFeeds(
                self.prices, self._session, default_timeout=config.defaults.timeout
            )
            stack.push_async_callback(self._feeds.stop)
            await self._feeds.apply(config.prices)
            self._limiters = LimiterRegistry()
            await self.publisher.publish(restored)
            self._scheduler = await stack.enter_async_context(Scheduler(self._handle_result))
            await self._scheduler.apply(self._plans(config))
            if self.cluster is not None:
                await self.cluster.beat()  # the share it can take now; the loop does the rest
            log.info(
                "started",
                accounts=len(config.accounts),
                rules=len(loaded.rules),
                sinks=len(config.sinks),
                state=store.location,
            )
            self._running = stack.pop_all()

    async def _open_when_reachable(self, store: StateStore) -> None:
        """Open a replica's store, waiting while PostgreSQL does not answer (down, restarting)
        rather than exiting: systemd would only restart balwatch into the same wait. What
        waiting cannot fix (a wrong password, a missing database) is raised at once, and so
        is the wait's last error when a stop is asked for meanwhile."""
        delay = 1.0
        waited = False
        while True:
            try:
                await store.open()
            except Unreachable as exc:
                if self.stopping.is_set():
                    raise
                waited = True
                log.warning("state_store_unreachable", error=str(exc), retry_in=delay)
                self._notifier.status(f"waiting for the state database: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, OPEN_RETRY_MAX)
                continue
            if waited:
                log.info("state_store_reachable", location=store.location)
            return

    def _restore(self, saved: SavedState, config: Config) -> list[Alert]:
        """Put what the last run left into the engine; returns the resolves that makes (of
        alerts whose rule or account is gone, of self-alerts whose cause is)."""
        now = self._clock()
        engine = self.engine
        restored = saved.restore(engine, now)
        for account in self._owned_accounts(config):
            engine.register_account(account.name, account.exchange, now)
        configured = {a.name for a in config.accounts}
        for gone in {a.account for a in saved.accounts} - configured:
            restored += engine.forget_account(gone, now)
        self._self_alerts.restore(saved.self_alerts)
        restored += self._self_alerts.resolve("config_error", SELF)  # this config loaded
        for name in self._self_alerts.accounts("source_auth_failed"):
            if name not in configured:
                restored += self._self_alerts.resolve("source_auth_failed", name)
        log.info(
            "state_restored",
            alerts=len(saved.alerts),
            accounts=len(saved.accounts),
            samples=len(saved.samples),
        )
        return restored

    # --- main loop and shutdown --------------------------------------------------------

    async def serve(self) -> None:
        """Tick, watch the files, reload, feed the watchdog: until :meth:`stop`."""
        background = [
            asyncio.create_task(self._ticker(), name="tick"),
            asyncio.create_task(self._watch_files(self._watched), name="watch"),
            asyncio.create_task(self._reloader(), name="reload"),
            asyncio.create_task(
                run_watchdog(self._notifier, lambda: self._progress, self.stopping),
                name="watchdog",
            ),
        ]
        if self.cluster is not None:
            background.append(asyncio.create_task(self.cluster.run(), name="membership"))
        try:
            await self.stopping.wait()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop polling, commit and flush what is left, deliver for a grace period, close."""
        running, self._running = self._running, None
        if running is None:
            return
        self._notifier.stopping()
        log.info("stopping")
        async with running:
            await self._scheduler.stop()
            # Alerts of pollers cancelled while they waited for, or were in, a commit.
            await self.publisher.close()
            if self.cluster is not None:  # flushed: the others may take the accounts now
                await self.cluster.leave()
            drained = await self.outbox.drain(STOP_GRACE_SECONDS)
            if not drained:
                log.warning("stopped_with_pending_deliveries", grace=STOP_GRACE_SECONDS)
        log.info("stopped")

    def _plans(self, config: Config) -> list[PollPlan]:
        """Poll plans; an account whose settings did not change keeps its adapter (tokens)."""
        accounts: dict[str, _Account] = {}
        plans = []
        for account in self._owned_accounts(config):
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
                key = credential_key(account.exchange, spec.credentials, account.name)
                limiter = self._limiters.get(key, with_headroom(limit))
            gate = None if self.cluster is None else partial(self.cluster.holds, account.name)
            plans.append(
                PollPlan(kept.adapter, config.poll_interval(account), limiter, may_poll=gate)
            )
        self._accounts = accounts
        return plans

    def _owned_accounts(self, config: Config) -> list[AccountConfig]:
        """The accounts this daemon polls: all of them, or a replica's leased ones."""
        if self._owned is None:
            return list(config.accounts)
        return [a for a in config.accounts if a.name in self._owned]

    # --- replicas: balwatch.cluster.membership.Holder ----------------------------------

    async def take(self, scope: Scope) -> None:
        """Leases gained: load what the last owner committed, restore it, poll."""
        assert self.cluster is not None and self._owned is not None
        config = self.loaded.config
        now = self._clock()
        saved = await self.store.load(now - self.engine.history.retention, scope)
        accounts = [a for a in config.accounts if scope.covers(a.name)]
        async with self._turn:
            now = self._clock()
            restored = self.engine.take_over(saved.alerts, saved.accounts, saved.samples, now)
            for account in accounts:
                self.engine.register_account(account.name, account.exchange, now)
            self._owned.update(a.name for a in accounts)
            await self._scheduler.apply(self._plans(config))
        log.info(
            "accounts_taken",
            accounts=len(accounts),
            alerts=len(saved.alerts),
            samples=len(saved.samples),
        )
        await self.publisher.publish(restored)

    async def hand_over(self, keys: Collection[str]) -> None:
        """Leases to release, still held: stop polling, commit and flush, forget here."""
        async with self._turn:
            accounts, grouped = await self._stop_polling(keys)
            # What is queued commits while the leases hold, then the states behind it.
            await self.publisher.publish([])
            await self.publisher.flush()
            self._forget_here(accounts, grouped)
        log.info("accounts_handed_over", accounts=len(accounts))

    async def give_up(self, keys: Collection[str]) -> None:
        """Leases lost: stop polling at once, forget here; nothing of theirs is written (the
        publisher drops their alerts: they are no longer held)."""
        accounts, grouped = await self._stop_polling(keys)
        self._forget_here(accounts, grouped)
        log.warning("accounts_given_up", accounts=len(accounts))

    async def _stop_polling(self, keys: Collection[str]) -> tuple[list[str], list[str]]:
        """The accounts and grouped rules of ``keys``, no longer polled when this returns."""
        assert self.cluster is not None and self._owned is not None
        accounts = self.cluster.keys.accounts_of(keys)
        grouped = [
            owner[len(GROUP_SERIES) :]
            for owner in self.cluster.keys.owners_of(keys)
            if owner.startswith(GROUP_SERIES)
        ]
        self._owned.difference_update(accounts)
        await self._scheduler.apply(self._plans(self.loaded.config))
        return accounts, grouped

    def _forget_here(self, accounts: list[str], grouped: list[str]) -> None:
        self.engine.release(set(accounts), grouped)
        for account in accounts:
            self.metrics.forget_account(account)
            self.latest.forget(account)
            self._polled.discard(account)
            self._failing.discard(account)
            # this replica's own alert about the account: the next owner raises its own
            self._owed += self._self_alerts.resolve("source_auth_failed", account)

    # --- the data path ---------------------------------------------------------------

    async def _handle_result(self, result: PollResult) -> None:
        now = self._clock()
        result = priced(result, self.prices, now)  # every reader below sees rate_usd
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
        await self.publisher.publish(alerts)
        self._polled.add(result.account)
        self._check_ready()

    async def _ticker(self) -> None:
        last_flush = last_prune = last_resync = time.monotonic()
        while True:
            await asyncio.sleep(self._tick_seconds)
            self._progress = time.monotonic()
            await self._follow_store()
            if time.monotonic() - last_prune >= PRUNE_SECONDS:
                last_prune = time.monotonic()
                await self._prune_silences()
            async with self._turn:
                owed, self._owed = self._owed, []
                await self.publisher.publish([*owed, *self.engine.tick(self._clock())])
            await self.publisher.catch_up()
            if self.cluster is not None and time.monotonic() - last_resync >= RESYNC_SECONDS:
                last_resync = time.monotonic()
                await self._resync()
            self.metrics.record_evaluation("tick")
            self.metrics.set_active(*self.engine.counts())
            self.metrics.set_outbox(self.outbox.stats())
            if self.cluster is not None:  # a standby polls nothing, and is still up
                self._check_ready()
            status = self._status_line()
            if status != self._last_status:
                self._last_status = status
                self._notifier.status(status)
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                await self.publisher.flush()

    async def _follow_store(self) -> None:
        """Take in what was changed by hand, maybe by another process (the CLI): silences,
        and dead letters made pending again. One cheap read when nothing changed."""
        try:
            changes = await self.store.changes()
            if changes.silences != self._changes.silences:
                self.muting.set_silences(await self.store.silences())
                now = self._clock()
                log.info(
                    "silences_loaded",
                    active=sum(s.active(now) for s in self.muting.silences),
                    stored=len(self.muting.silences),
                )
            if changes.outbox != self._changes.outbox:
                log.info("outbox_resynced", deliveries=await self.outbox.resync())
        except Exception:
            if not self._changes_unreadable:
                self._changes_unreadable = True
                log.exception("store_changes_unreadable")
            return
        self._changes = changes

    async def _resync(self) -> None:
        """Replicas: take in deliveries whose claim lapsed (their replica died)."""
        try:
            added = await self.outbox.resync()
        except Exception as exc:
            log.warning("outbox_resync_failed", error=type(exc).__name__)
            return
        if added:
            log.info("outbox_resynced", deliveries=added)

    async def _prune_silences(self) -> None:
        try:
            await self.store.prune_silences(self._clock() - RETENTION)
        except Exception:
            log.exception("silence_prune_failed")

    def _self_sources(self) -> list[tuple[str, dict[str, str]]]:
        """balwatch's own firing alerts, as inhibit rules read sources."""
        return [
            (
                alert.fingerprint,
                alert_fields(
                    rule=alert.rule,
                    account=alert.account,
                    exchange=alert.exchange,
                    venue=alert.venue,
                    asset=alert.asset,
                    severity=alert.severity,
                    instance=self.muting.instance,
                    labels=alert.labels,
                ),
            )
            for alert in self._self_alerts.firing()
        ]

    def _status_line(self) -> str:
        total = len(self._accounts)
        failing = len(self._failing)
        line = (
            f"{total - failing}/{total} accounts ok, {failing} failing, "
            f"{self.engine.counts()[1]} alerts firing"
        )
        if self.publisher.held:
            line += f", {self.publisher.held} alerts held: state database not writable"
        if self.cluster is not None and not self._accounts:
            line = f"standby (replica {self.cluster.instance}): holds no accounts"
        return line

    def _check_ready(self) -> None:
        if self.started.is_set():
            return
        # A standby replica is up (systemd's READY), only not serving (/readyz says why).
        _, reasons = self.ready()
        if not [r for r in reasons if r != STANDBY]:
            self.started.set()
            self._notifier.ready(self._status_line())
            log.info("ready")

    # --- reload ----------------------------------------------------------------------

    async def _watch_files(self, seen: _Signature) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                current = _signature(self.loaded)
            except OSError as exc:
                if not out_of_descriptors(exc):
                    raise
                self._unreadable.failed(error=exc.strerror)
                continue
            self._unreadable.ok()
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
            if out_of_descriptors(exc):
                self._unreadable.failed(error=getattr(exc, "strerror", None))
                asyncio.get_running_loop().call_later(WATCH_SECONDS, self._reload_requested.set)
                self._notifier.ready(self._status_line())
                return False
            # A loader bug must not end reloading for good: reject the set like a bad one.
            self.metrics.record_reload(False)
            if isinstance(exc, ConfigError):
                for problem in exc.problems:
                    (log.warning if problem.severity == "warning" else log.error)(
                        "reload_rejected", problem=str(problem)
                    )
                # The alert names what rejected the set: an error, not a warning beside it;
                # by place and kind only, since a message may quote the file (any file a
                # rule glob matched) and the alert goes to every sink.
                errors = [p for p in exc.problems if p.severity != "warning"] or exc.problems
                first = errors[0].located_kind() if errors else "unknown problem"
                if len(errors) > 1:
                    first += f" (and {len(errors) - 1} more: see the log or balwatch check)"
            else:
                log.exception("reload_failed")
                first = f"the files could not be loaded ({type(exc).__name__}; see the log)"
            await self.publisher.publish(
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
        self._unreadable.ok()
        old = self.loaded.config
        new = loaded.config
        # The redactor learns the new credentials, and keeps the old for polls in flight.
        redact.install((*old.secrets(), *new.secrets()))
        if self._configure_logs:
            logs.configure(new.log.format, new.log.level)
        if _restart_only(old) != _restart_only(new):
            log.warning("reload_needs_restart", changed="sinks, http, state_dir or state")
        if self.cluster is not None and new.instance != old.instance:
            # A replica's name is its heartbeat row and the owner of its leases.
            log.warning("reload_needs_restart", changed="instance")
            new = new.model_copy(update={"instance": old.instance})
        now = self._clock()
        self.engine.set_account_labels(_labels(new))
        self.metrics.export_balances(new.metrics.balances)
        self.publisher.placement = (new.instance, new.external_url)
        self.muting.configure(new)  # intervals and inhibit rules; sink settings need a restart
        alerts = self.engine.replace_rules(loaded.rules, now)
        for gone in {a.name for a in old.accounts} - {a.name for a in new.accounts}:
            alerts += self.engine.forget_account(gone, now)
            alerts += self._self_alerts.resolve("source_auth_failed", gone)
            self.metrics.forget_account(gone)
            self.latest.forget(gone)
            self._polled.discard(gone)
            self._failing.discard(gone)
            if self._owned is not None:
                self._owned.discard(gone)
        if self.cluster is not None:
            # The removed accounts' alerts resolve under the leases they were held by; then
            # keys whose accounts changed are handed over, and taken again under the new.
            await self.publisher.publish(alerts)
            alerts = []
            await self.cluster.rekey(lease_keys(new, loaded.rules))
        for account in self._owned_accounts(new):
            self.engine.register_account(account.name, account.exchange, now)
        # Keep sinks, http and state as they are; everything else follows the new files.
        self.loaded = loaded._replace(
            config=new.model_copy(
                update={
                    "sinks": old.sinks,
                    "http": old.http,
                    "state_dir": old.state_dir,
                    "state": old.state,
                }
            )
        )
        self.prices.configure(new.prices)
        await self._feeds.apply(new.prices)
        # Also when only defaults changed (interval, timeout): apply() restarts just the
        # pollers whose plan is different.
        await self._scheduler.apply(self._plans(self.loaded.config))
        alerts += self._self_alerts.resolve("config_error", SELF)
        await self.publisher.publish(alerts)
        self.metrics.record_reload(True)
        log.info("reloaded", rules=len(loaded.rules), accounts=len(new.accounts))
        self._notifier.ready(self._status_line())
        return True

    # --- StatusSource for the HTTP API -------------------------------------------------

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.cluster is not None and not self._accounts:
            reasons.append(STANDBY)
        waiting = set(self._accounts) - self._polled
        if waiting:
            reasons.append(f"first poll pending for {len(waiting)} accounts")
        down = [s.name for s in self.sinks if not s.connected()]
        if down:
            reasons.append(f"sinks not connected: {', '.join(down)}")
        return not reasons, reasons

    def alerts(self) -> list[dict[str, object]]:
        rule_states = (*self.engine.firing(), *self.engine.pending())
        own = [{**s.to_json(), **_NOT_MUTED} for s in self._self_alerts.states()]
        statuses = self.muting.statuses(rule_states)
        listed = [
            {**s.to_json(), **status} for s, status in zip(rule_states, statuses, strict=True)
        ]
        firing = sum(1 for s in rule_states if s.phase == "firing")
        return [*listed[:firing], *own, *listed[firing:]]

    def alert(self, fingerprint: str) -> dict[str, object] | None:
        found = self.engine.find(fingerprint)
        if found is not None:
            return {**found.to_json(), **self.muting.statuses([found])[0]}
        own = next((s for s in self._self_alerts.states() if s.fingerprint == fingerprint), None)
        return None if own is None else {**own.to_json(), **_NOT_MUTED}

    # --- on call: silences and dead letters, for the HTTP API --------------------------

    def now(self) -> float:
        return self._clock()

    def silenced_by(self, alert: Alert) -> list[str]:
        """The ids of the silences that mute ``alert`` now (none for balwatch's own)."""
        if alert.labels.get("source") == SELF and alert.expression == "":
            return []
        return self.muting.silenced_by(
            alert_fields(
                rule=alert.rule,
                account=alert.account,
                exchange=alert.exchange,
                venue=alert.venue,
                asset=alert.asset,
                severity=alert.severity,
                instance=self.muting.instance,
                labels=alert.labels,
            )
        )

    def silences(self) -> list[Silence]:
        return self.muting.silences

    async def add_silence(self, silence: Silence) -> None:
        """Store a new silence; it applies at once, here (other daemons: within a second)."""
        await self.store.add_silence(silence)
        self.muting.set_silences([*self.muting.silences, silence])
        log.info("silence_added", silence=silence.id, author=silence.author)

    async def expire_silence(self, silence_id: str) -> Silence | None:
        ended = await self.store.expire_silence(silence_id, self._clock())
        if ended is not None:
            self.muting.set_silences(await self.store.silences())
            log.info("silence_expired", silence=silence_id)
        return ended

    async def outbox_entries(self, *, dead_only: bool) -> list[OutboxEntry]:
        return await self.store.outbox(dead_only=dead_only)

    async def retry_dead(self, ids: list[int] | None) -> Retried:
        retried = await self.store.retry_dead(ids)
        await self._follow_store()  # the workers take them in now, not at the next tick
        return retried

    async def drop_dead(self, ids: list[int]) -> list[int]:
        dropped = await self.store.drop_dead(ids)
        await self._follow_store()
        return dropped

    def balances(self) -> dict[str, object]:
        return self.latest.document()

    def cluster_status(self) -> dict[str, object] | None:
        return None if self.cluster is None else self.cluster.status()


# /readyz of a replica that holds no lease: up, and taking accounts over when one goes.
STANDBY: Final = "standby: holds no accounts"

# balwatch's own alerts are never muted (balwatch.muting).
_NOT_MUTED: Final[dict[str, object]] = {"silenced_by": [], "inhibited_by": []}


def _labels(config: Config) -> dict[str, dict[str, str]]:
    return {account.name: dict(account.labels) for account in config.accounts}


def _restart_only(config: Config) -> tuple[object, ...]:
    return (config.sinks, config.http, config.state_dir, config.state)


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


@contextlib.contextmanager
def capture_signals(daemon: Daemon) -> Iterator[None]:
    """SIGTERM and SIGINT stop ``daemon``, SIGHUP reloads it, while the block runs.

    For the caller that runs the daemon in the main thread (the CLI): the handlers that
    were there before are put back when the block ends, however it ends.
    """
    loop = asyncio.get_running_loop()
    actions = {
        signal.SIGTERM: daemon.stop,
        signal.SIGINT: daemon.stop,
        signal.SIGHUP: daemon.request_reload,
    }
    previous = {sig: signal.getsignal(sig) for sig in actions}
    try:
        for sig, action in actions.items():
            loop.add_signal_handler(sig, action)
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)
