"""The daemon's Prometheus metrics (``docs/metrics.md``), on a registry of their own.

One :class:`Metrics` per daemon, each with its own ``CollectorRegistry`` rather than the
process-global one, so tests and several daemons in one process never collide and
``/metrics`` shows only balwatch series (no ``python_gc_*`` noise, no duplicate errors).

Every name has the ``balwatch_`` prefix. Label values are account, exchange, sink and rule
names, error kinds, the venues and assets of balance rows, and fixed words: never URLs,
credentials or error messages, which could carry secrets and would make the label set
unbounded.

=========================================================  ===================================
series                                                     recorded by
=========================================================  ===================================
``polls_total{account,exchange}``                          :meth:`Metrics.record_poll`, every
                                                           poll, good or failed
``poll_errors_total{account,exchange,kind}``               :meth:`Metrics.record_poll`, kind
                                                           is :class:`~balwatch.errors.ErrorKind`
``poll_duration_seconds{exchange}`` (histogram)            :meth:`Metrics.record_poll`, good
                                                           and failed polls alike
``last_successful_poll_timestamp_seconds{account}``        :meth:`Metrics.record_poll`
``balance{account,exchange,venue,asset,metric}``,          read from the ``balances`` source at
``balance_usd{account,exchange,venue,asset,metric}``       scrape time; :meth:`export_balances`
``rule_evaluations_total{trigger}``                        :meth:`Metrics.record_evaluation`
``alerts_total{rule,severity,event}``                      :meth:`Metrics.record_alerts`
``alerts_active{state}``                                   :meth:`Metrics.set_active`
``outbox_depth{sink}``, ``deliveries_total{sink,outcome}`` :meth:`Metrics.set_outbox`
``config_reload_total{result}``                            :meth:`Metrics.record_reload`
``leases_held``, ``lease_acquired_total``,                  :meth:`Metrics.record_leases`
``lease_lost_total``, ``failovers_total``                  (replicas only)
``build_info{version}``                                    constant 1
=========================================================  ===================================

The balance gauges are not set per poll: tens of thousands of series (1,000 accounts x 10
assets x a few metrics) would cost the event loop a lock and a float per value on every
poll. A collector reads the latest good rows when ``/metrics`` is rendered instead and
converts the Decimal amounts to the exposition's floats there. So a poll costs nothing
more, a row that vanished from an account's answer or an account that left the config has
no series at the next scrape, and a failed poll leaves the last good values (the latest
rows keep them).

Rendering (:meth:`Registry.render`) runs on the event loop, in slices of about half a
millisecond with a millisecond's sleep between them. A worker thread would hold the GIL for
the whole render (hundreds of milliseconds for 20,000 series) in 5 ms turns, and every
poll, commit and publish during a scrape would wait for those turns; rendering on the loop
without the sleeps would do the same to the state database's thread, which then waits
5 ms for the GIL at each step of a commit. prometheus-client renders every piece
(:func:`prometheus_client.generate_latest` on a family, or on a part of its samples); the
pieces are joined into the same bytes as ``generate_latest`` of the whole registry. An
account's balance series are rendered once per poll that brought its rows and reused by
later scrapes until its next good poll (:class:`_BalanceCollector`).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from balwatch.alert import Alert
from balwatch.errors import ErrorKind
from balwatch.model import AMOUNTS, METRICS, Balance
from balwatch.poll import PollResult

# Every counter and histogram would get a `_created` series too: a timestamp nobody alerts
# on, doubling what is scraped. (A process-wide switch: balwatch is the only user.)
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

NAMESPACE: Final = "balwatch"
# One HTTP request to an exchange: from a fast local answer to the longest sane timeout.
POLL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES: Final = ("delivered", "failed", "dead")

# Rendering /metrics on the event loop: slices of this much work (at least one piece), each
# followed by a pause of GAP_SECONDS in which the loop and other threads run; a family is
# rendered this many samples at a time (about half a millisecond's work).
SLICE_SECONDS: Final = 0.0005
GAP_SECONDS: Final = 0.001
SAMPLES_PER_PIECE: Final = 50

Trigger = Literal["poll", "poll_failed", "tick"]
"""What made the engine evaluate: ``Engine.observe``, ``Engine.poll_failed``, ``Engine.tick``."""


class SinkCounts(Protocol):
    """The part of the outbox's per-sink stats that metrics read (``SinkStats`` fits)."""

    @property
    def depth(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def dead(self) -> int: ...


SinkStatsLike = SinkCounts | Mapping[str, object]


class BalanceRows(Protocol):
    """Where the balance gauges come from (``LatestBalances`` fits)."""

    def good_rows(self) -> Iterable[Sequence[Balance]]:
        """Each account's rows of its last good poll, a list per account, the same list
        object until the account's next good poll. Called at each render, on the event
        loop (:meth:`Registry.render`) or on any thread (``generate_latest``)."""
        ...


BALANCE_LABELS: Final = ("account", "exchange", "venue", "asset", "metric")
BALANCE_HELP: Final = (
    "The account's balance of the asset on the venue, by metric (total, available, "
    "locked, ...), as of its last good poll; one series per metric the source reports, "
    "and metric=rate_usd is the USD price of one unit. A failed poll leaves the last good "
    "values: balwatch_last_successful_poll_timestamp_seconds tells how old they are."
)
BALANCE_USD_HELP: Final = (
    "USD value of each amount metric of a balwatch_balance row (the amount times the row's "
    "rate_usd), for rows with a price; as old as balwatch_balance."
)


class Registry(CollectorRegistry):
    """A ``CollectorRegistry`` (auto-describing) that renders itself in slices on the loop.

    ``generate_latest(registry)`` works as on any registry; :meth:`render` returns the same
    bytes without holding the event loop (or, from a thread, the GIL) for the whole render.
    """

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._collectors: list[Collector] = []  # in registration order, as collect() goes

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self._collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self._collectors.remove(collector)

    def pieces(self) -> Iterator[bytes]:
        """The exposition in pieces of about :data:`SAMPLES_PER_PIECE` samples, in order.

        Joined, they are ``generate_latest(self)``. Each piece is rendered by
        prometheus-client; a family too big for one piece is rendered a slice of its samples
        at a time and its ``# HELP``/``# TYPE`` head kept once.
        """
        for collector in list(self._collectors):
            if isinstance(collector, _BalanceCollector):
                yield from collector.pieces()
            else:
                for family in collector.collect():
                    yield from _family_pieces(family)

    async def render(self, slice_seconds: float = SLICE_SECONDS, gap: float = GAP_SECONDS) -> bytes:
        """``generate_latest(self)``, rendered on the event loop a slice at a time.

        After each slice of about ``slice_seconds`` the render sleeps ``gap`` seconds: the
        loop then waits in the selector without the GIL, so threads (the state database's)
        take it at once rather than after the interpreter's 5 ms switch interval.

        Between slices, polls may land and counters move: each family is read at once (as
        ``generate_latest`` reads it), the registry as a whole is not, as with
        ``generate_latest`` from a thread.
        """
        clock = time.perf_counter
        out: list[bytes] = []
        deadline = clock() + slice_seconds
        for piece in self.pieces():
            out.append(piece)
            if clock() >= deadline:
                await asyncio.sleep(gap)
                deadline = clock() + slice_seconds
        return b"".join(out)


class _Families(Collector):
    """Given families, as a collector: what ``generate_latest`` renders."""

    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _with_samples(family: Metric, samples: list[Sample]) -> Metric:
    part = copy.copy(family)
    part.samples = samples
    return part


def _head(family: Metric) -> bytes:
    """The family's ``# HELP`` and ``# TYPE`` lines, as prometheus-client renders them."""
    return generate_latest(_Families(_with_samples(family, [])))


def _samples_text(family: Metric, head: bytes) -> bytes:
    """The family's sample lines: its rendering without the head."""
    text = generate_latest(_Families(family))
    if not text.startswith(head):  # a prometheus-client that renders otherwise
        raise AssertionError(f"{family.name}: the rendering does not start with its head")
    return text[len(head) :]


# Samples that generate_latest moves to a family of their own after the family's samples.
_MOVED_SUFFIXES: Final = ("_created", "_gsum", "_gcount")


def _family_pieces(family: Metric) -> Iterator[bytes]:
    samples = family.samples
    moved = {family.name + suffix for suffix in _MOVED_SUFFIXES}
    if len(samples) <= SAMPLES_PER_PIECE or any(s.name in moved for s in samples):
        yield generate_latest(_Families(family))
        return
    head = _head(family)
    yield head
    for start in range(0, len(samples), SAMPLES_PER_PIECE):
        part = _with_samples(family, samples[start : start + SAMPLES_PER_PIECE])
        yield _samples_text(part, head)


class Metrics:
    """Every balwatch series, and the few calls the daemon records them with."""

    def __init__(
        self,
        version: str,
        *,
        clock: Callable[[], float] = time.time,
        balances: BalanceRows | None = None,
    ) -> None:
        """``balances``: the source of the balance gauges; without one there are none."""
        self.registry = Registry()
        self._clock = clock
        reg, ns = self.registry, NAMESPACE
        self._polls = Counter(
            "polls",
            "Polls made, good or failed.",
            ["account", "exchange"],
            namespace=ns,
            registry=reg,
        )
        self._poll_errors = Counter(
            "poll_errors",
            "Failed polls by error kind (auth, rate_limited, unavailable, bad_response).",
            ["account", "exchange", "kind"],
            namespace=ns,
            registry=reg,
        )
        self._poll_duration = Histogram(
            "poll_duration_seconds",
            "Time one poll took, failed polls included.",
            ["exchange"],
            buckets=POLL_BUCKETS,
            namespace=ns,
            registry=reg,
        )
        self._last_success = Gauge(
            "last_successful_poll_timestamp_seconds",
            "Unix time of the account's last good poll.",
            ["account"],
            namespace=ns,
            registry=reg,
        )
        self._rule_evaluations = Counter(
            "rule_evaluations",
            "Rule engine evaluation passes: one per good poll (its row and account rules), "
            "failed poll (account rules) or tick (account rules of every account).",
            ["trigger"],
            namespace=ns,
            registry=reg,
        )
        self._alerts = Counter(
            "alerts",
            "Alert notifications emitted, by event (firing, repeat, resolved).",
            ["rule", "severity", "event"],
            namespace=ns,
            registry=reg,
        )
        self._alerts_active = Gauge(
            "alerts_active", "Alert states now, by phase.", ["state"], namespace=ns, registry=reg
        )
        self._outbox_depth = Gauge(
            "outbox_depth",
            "Deliveries waiting for a sink, those being sent included.",
            ["sink"],
            namespace=ns,
            registry=reg,
        )
        self._deliveries = Counter(
            "deliveries",
            "Delivery attempts by outcome: delivered, failed (will be retried), dead "
            "(dead-lettered).",
            ["sink", "outcome"],
            namespace=ns,
            registry=reg,
        )
        self._state_write_failures = Counter(
            "state_write_failures",
            "Failed writes to the state database (disk full, read-only, I/O error), by what "
            "was written: alerts (held in memory, retried every second) or flush (periodic "
            "engine state and history).",
            ["write"],
            namespace=ns,
            registry=reg,
        )
        self._alerts_uncommitted = Gauge(
            "alerts_uncommitted",
            "Alerts whose commit failed, held in memory until the state database takes "
            "them; they are not delivered before then.",
            namespace=ns,
            registry=reg,
        )
        self._config_reloads = Counter(
            "config_reload",
            "Config and rule reloads by result.",
            ["result"],
            namespace=ns,
            registry=reg,
        )
        self._leases_held = Gauge(
            "leases_held",
            "Lease keys (accounts polled together) this replica holds now; 0 on a standby "
            "and on a single daemon.",
            namespace=ns,
            registry=reg,
        )
        self._leases_acquired = Counter(
            "lease_acquired",
            "Lease keys this replica took: free ones, released ones, expired ones.",
            namespace=ns,
            registry=reg,
        )
        self._leases_lost = Counter(
            "lease_lost",
            "Lease keys this replica lost without releasing them: a renewal refused or too "
            "late, a write fenced; their accounts stopped being polled here at once.",
            namespace=ns,
            registry=reg,
        )
        self._failovers = Counter(
            "failovers",
            "Lease keys this replica took over from a replica that did not release them "
            "(it died or was cut off: its lease expired).",
            namespace=ns,
            registry=reg,
        )
        build_info = Gauge(
            "build_info",
            "Constant 1, labelled with the running version.",
            ["version"],
            namespace=ns,
            registry=reg,
        )
        build_info.labels(version).set(1)
        # Series that exist from the start read 0 rather than missing, so rate() and
        # absence alerts work before the first event.
        self.set_active(0, 0)
        for result in ("ok", "error"):
            self._config_reloads.labels(result)
        for write in ("alerts", "flush"):
            self._state_write_failures.labels(write)
        self._exchanges: dict[str, str] = {}  # account -> exchange, to remove its series
        self._delivery_seen: dict[str, dict[str, int]] = {}  # sink -> outcome -> last count
        self._balances = None if balances is None else _BalanceCollector(balances)
        if self._balances is not None:
            reg.register(self._balances)

    # -- polls

    def record_poll(self, result: PollResult) -> None:
        """Count one poll; a good one also sets the account's last-success time to now."""
        account, exchange = result.account, result.exchange
        if self._exchanges.get(account) != exchange:
            self.forget_account(account)
            self._exchanges[account] = exchange
            for kind in ErrorKind:  # every kind reads 0 until it happens
                self._poll_errors.labels(account, exchange, kind)
        self._polls.labels(account, exchange).inc()
        self._poll_duration.labels(exchange).observe(result.seconds)
        if result.error is None:
            self._last_success.labels(account).set(self._clock())
        else:
            self._poll_errors.labels(account, exchange, result.error.kind).inc()

    def forget_account(self, account: str) -> None:
        """Drop the account's series (it left the config), so it does not look stale forever."""
        exchange = self._exchanges.pop(account, None)
        if exchange is None:
            return
        self._polls.remove(account, exchange)
        for kind in ErrorKind:
            self._poll_errors.remove(account, exchange, kind)
        self._last_success.remove(account)

    # -- balances

    def export_balances(self, on: bool) -> None:
        """Show or hide the balance gauges (config ``metrics.balances``), from the next scrape."""
        if self._balances is not None:
            self._balances.on = on

    # -- rules and alerts

    def record_evaluation(self, trigger: Trigger) -> None:
        """Count one engine pass; call once per ``observe``/``poll_failed``/``tick`` call."""
        self._rule_evaluations.labels(trigger).inc()

    def record_alerts(self, alerts: Iterable[Alert]) -> None:
        """Count notifications the engine emitted (before routing to sinks)."""
        for alert in alerts:
            self._alerts.labels(alert.rule, alert.severity, alert.event).inc()

    def set_active(self, pending: int, firing: int) -> None:
        """Alert states after an engine pass (``len(engine.pending())``, ``firing()``)."""
        self._alerts_active.labels("pending").set(pending)
        self._alerts_active.labels("firing").set(firing)

    def record_reload(self, ok: bool) -> None:
        self._config_reloads.labels("ok" if ok else "error").inc()

    # -- state database

    def record_state_write_failure(self, write: Literal["alerts", "flush"]) -> None:
        self._state_write_failures.labels(write).inc()

    def set_uncommitted(self, alerts: int) -> None:
        self._alerts_uncommitted.set(alerts)

    # -- replicas

    def record_leases(self, *, held: int, acquired: int, lost: int, failovers: int) -> None:
        """The keys held now, and how many were just acquired, lost, taken over."""
        self._leases_held.set(held)
        self._leases_acquired.inc(acquired)
        self._leases_lost.inc(lost)
        self._failovers.inc(failovers)

    # -- outbox

    def set_outbox(self, stats: Mapping[str, SinkStatsLike]) -> None:
        """Take a snapshot of the outbox, ``{sink: stats}``, e.g. ``Outbox.stats()``.

        Each sink's stats is an object with int attributes, or a mapping with int values,
        for ``depth`` (deliveries held now) and ``delivered``, ``failed``, ``dead`` (counts
        since that sink's worker started). A key that is missing or not an int leaves its
        series alone, and other keys are ignored, so the outbox can grow fields freely.

        The counts are cumulative per worker, so the counters advance by the difference
        from the previous snapshot; a count lower than before means the worker was
        replaced (reload) and counts from zero again. Sinks absent from the snapshot lose
        their depth series (a removed sink holds nothing); their counters stay.
        """
        for sink, counts in stats.items():
            depth = _count(counts, "depth")
            if depth is not None:
                self._outbox_depth.labels(sink).set(depth)
            seen = self._delivery_seen.setdefault(sink, {})
            for outcome in OUTCOMES:
                child = self._deliveries.labels(sink, outcome)
                now = _count(counts, outcome)
                if now is None:
                    continue
                before = seen.get(outcome, 0)
                child.inc(now - before if now >= before else now)
                seen[outcome] = now
        for sink in [s for s in self._delivery_seen if s not in stats]:
            del self._delivery_seen[sink]
            self._outbox_depth.remove(sink)


class _BalanceCollector(Collector):
    """``balance`` and ``balance_usd`` from the latest good rows, made at each scrape.

    :meth:`collect` (``generate_latest``, ``get_sample_value``) builds every sample anew;
    :meth:`pieces` (:meth:`Registry.render`) renders each account's samples once per row
    list, that is once per good poll, and reuses the text until the account's rows change.
    """

    def __init__(self, rows: BalanceRows) -> None:
        self._rows = rows
        self.on = True  # read by the scrape; a bool is swapped whole
        balance, usd = self._families()
        self._heads = (_head(balance), _head(usd))
        # id(rows) -> (rows, balance text, balance_usd text), of the last render: an entry
        # holds its rows, so their id is not reused while it is here.
        self._rendered: dict[int, tuple[Sequence[Balance], bytes, bytes]] = {}

    def describe(self) -> list[GaugeMetricFamily]:
        """The names, reserved at registration even while hidden or before any poll."""
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self.on:
            return
        balance, usd = self._families()
        for rows in self._rows.good_rows():
            _add_rows(rows, balance, usd)
        yield balance
        yield usd

    def pieces(self) -> Iterator[bytes]:
        """What :meth:`collect` renders to, one account at a time, from the rendered texts."""
        if not self.on:
            self._rendered = {}
            return
        before, now = self._rendered, {}
        usd_texts = []
        yield self._heads[0]
        for rows in self._rows.good_rows():
            entry = before.get(id(rows))
            if entry is None or entry[0] is not rows:
                balance, usd = self._families()
                _add_rows(rows, balance, usd)
                entry = (
                    rows,
                    _samples_text(balance, self._heads[0]),
                    _samples_text(usd, self._heads[1]),
                )
            now[id(rows)] = entry
            yield entry[1]
            usd_texts.append(entry[2])
        self._rendered = now  # the accounts gone, and rows replaced by a poll, drop out
        yield self._heads[1]
        yield from usd_texts

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(f"{NAMESPACE}_balance", BALANCE_HELP, labels=BALANCE_LABELS),
            GaugeMetricFamily(f"{NAMESPACE}_balance_usd", BALANCE_USD_HELP, labels=BALANCE_LABELS),
        )


def _add_rows(rows: Sequence[Balance], balance: GaugeMetricFamily, usd: GaugeMetricFamily) -> None:
    add_balance, add_usd = balance.add_metric, usd.add_metric
    for row in rows:
        where = (row.account, row.exchange, row.venue, row.asset)
        for metric in METRICS:
            value = getattr(row, metric)
            if value is not None:
                add_balance((*where, metric), float(value))
        rate = row.rate_usd
        if rate is None:
            continue
        for metric in AMOUNTS:
            value = getattr(row, metric)
            if value is not None:
                # The product in Decimal, as usd() in rules; only the result is a float.
                add_usd((*where, metric), float(value * rate))


def _count(stats: SinkStatsLike, key: str) -> int | None:
    value = stats.get(key) if isinstance(stats, Mapping) else getattr(stats, key, None)
    # bool is an int subclass but never a count; a negative count is not one either.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
