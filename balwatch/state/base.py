"""The state store: everything balwatch keeps across restarts, behind one interface.

What is kept: the engine's alert states and account liveness, the metric history the rules'
windows read, balwatch's own firing self-alerts, and the outbox (each alert document with
one delivery row per sink, pending until the sink acknowledged it, or dead). The daemon and
the outbox speak to a :class:`StateStore` only, in these terms; an implementation
(:mod:`balwatch.state.sqlite` today) owns its tables, transactions and locking.

Every implementation passes ``tests/state/test_conformance.py``. The guarantees it asks for:

- :meth:`StateStore.commit` is atomic: the alerts of an :class:`AlertCommit`, their
  deliveries, the state changes and self-alerts that came with them are stored together or
  not at all, and are durable when it returns.
- Delivery ids increase in commit order and are never reused, across restarts too (the
  outbox's per-fingerprint order rests on that); within one commit they follow the order of
  its alerts, then of each alert's sinks.
- A commit's ``on_commit`` runs on the event loop right after the transaction, before any
  later commit's, even when the caller was cancelled meanwhile.
- Values handed to :meth:`~StateStore.commit` and :meth:`~StateStore.flush` are the caller's
  snapshot: they are not changed afterwards, and the store may encode them later.
- Storage that is not the store's own, or whose schema is newer than this balwatch, is a
  :class:`StateError` from :meth:`~StateStore.open`, with nothing in it changed.
- What people change by hand (silences; dead letters retried or dropped) may be written by
  another store on the same storage, opened beside the daemon's by the CLI (for SQLite:
  ``SqliteStateStore(state_dir, exclusive=False)``). The daemon learns of it through
  :meth:`~StateStore.changes`, which it reads every second: each such write moves a counter.

Replicas (several daemons on one PostgreSQL database, :mod:`balwatch.state.postgres`) each
speak for the accounts whose leases they hold. Their writes carry a :class:`Scope`: the
lease keys they rely on with their fencing tokens. A write whose lease moved on is
:class:`Fenced` and writes nothing; a scoped flush replaces only its own accounts' states.
A store for one daemon (SQLite) takes the same arguments and ignores the scope.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Literal, NamedTuple, Self

from balwatch.alert import Alert, iso_z
from balwatch.rules.engine import AccountState, AlertState, Engine
from balwatch.rules.groups import GROUP_SERIES
from balwatch.rules.history import HistoryChanges, HistoryKey
from balwatch.silence import Silence
from balwatch.sink import AlertDoc

Sample = tuple[HistoryKey, float, Decimal]


class StateError(Exception):
    """The state store cannot be used (taken, foreign, too new, corrupt); it is left as it is."""


class NoState(StateError):
    """The storage holds no balwatch state yet, and this store may not create it (the CLI's,
    beside a daemon that never ran there)."""


class Unreachable(StateError):
    """The storage did not answer (a database server down, restarting or cut off): the same
    open may work later, unlike a wrong password or a missing database."""


class Fenced(StateError):
    """A lease this write needs is not this replica's any more: nothing written."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a replica speaks for: each lease key it holds with its fencing token, and which
    key each owner name is under. An owner name is an account name, or for a grouped rule
    its series name (GROUP_SERIES + rule name; the first element of its HistoryKeys)."""

    tokens: Mapping[str, int]
    owners: Mapping[str, str]  # owner name -> lease key

    def covers(self, owner: str | None) -> bool:
        """Whether ``owner``'s key is one this scope holds."""
        return owner is not None and self.owners.get(owner) in self.tokens


@dataclass(frozen=True, slots=True)
class Replica:
    """A daemon sharing the database, as its last heartbeat left it. Times are unix seconds
    by the database's clock; ``age`` is how long ago that heartbeat was, by that clock."""

    instance: str
    started_at: float
    heartbeat_at: float
    version: str
    address: str | None
    age: float


@dataclass(frozen=True, slots=True)
class Lease:
    """Who speaks for a lease key, until when. ``owner`` None: released. ``token`` (the
    fencing token) grew by one each time the owner changed. ``remaining`` is the seconds
    left by the database's clock (negative once expired)."""

    key: str
    owner: str | None
    token: int
    expires_at: float
    acquired_at: float
    remaining: float


def owner_name(state: AlertState) -> str:
    """Whose lease an alert state is under: its account, or a grouped rule's series."""
    if state.group is not None or state.account is None:
        return GROUP_SERIES + state.rule
    return state.account


@dataclass(slots=True)
class SavedState:
    """What a previous run left: read once at start by :meth:`StateStore.load`."""

    alerts: list[AlertState] = field(default_factory=list)
    accounts: list[AccountState] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # per series, oldest first
    self_alerts: list[Alert] = field(default_factory=list)
    # Upgrades of what lives outside the store, done once: name -> version reached (the
    # MQTT topic layout of retained alerts, balwatch.topiclayout). Absent: never recorded.
    markers: dict[str, int] = field(default_factory=dict)

    def restore(self, engine: Engine, now: float) -> list[Alert]:
        """Load the alert states, accounts and history into ``engine``.

        Returns the resolved notifications of restored firing alerts that the engine's rules
        no longer produce (:meth:`Engine.restore`).
        """
        closed = engine.restore(self.alerts, self.accounts, now)
        for key, t, value in self.samples:
            if t <= now:
                engine.history.record(key, t, value)
        engine.history.mark_saved()
        engine.drop_unused_history()  # metrics no rule reads any more: gone at the next flush
        return closed


@dataclass(slots=True)
class RoutedAlert:
    """An alert document and the sinks it goes to (duplicates dropped, order kept)."""

    alert: AlertDoc
    sinks: Sequence[str]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        value = self.alert.get("fingerprint")
        if not isinstance(value, str) or not value:
            raise ValueError("alert document has no fingerprint")
        self.fingerprint = value
        self.sinks = tuple(dict.fromkeys(self.sinks))


class StateChange(NamedTuple):
    """The engine state behind an alert now: ``state`` None once it went inactive."""

    fingerprint: str
    rule: str
    state: AlertState | None


@dataclass(slots=True)
class AlertCommit:
    """Alerts with the state changes that produced them: one transaction.

    ``self_alerts`` is the whole set of self-alerts firing now, replacing the stored one;
    None leaves it as it is. An alert for no sink is not stored (nothing would deliver or
    prune it); its state changes still are. ``markers`` are set (name -> version) in the
    same transaction (:attr:`SavedState.markers`).
    """

    alerts: Sequence[RoutedAlert] = ()
    states: Sequence[StateChange] = ()
    self_alerts: Sequence[Alert] | None = None
    markers: Mapping[str, int] = field(default_factory=dict)
    # The leases this commit relies on: Fenced, nothing stored, when one moved on.
    scope: Scope | None = None


@dataclass(slots=True)
class StateSnapshot:
    """The periodic flush: every alert and account state (replacing the stored ones) and
    what changed in the history since the last flush.

    With a ``scope`` (a replica): only the stored states whose owner is under one of its
    keys are replaced, the other replicas' are left; Fenced when a lease moved on.
    """

    alerts: Sequence[AlertState]
    accounts: Sequence[AccountState]
    history: HistoryChanges
    scope: Scope | None = None


@dataclass(slots=True, eq=False)
class Delivery:
    """One alert on its way to one sink; ``attempts`` counts the failed tries so far.

    ``message`` is set once the delivery went into a group message (:meth:`StateStore.bundle`):
    it is then sent again as that message, with the same others, until acknowledged or
    dead-lettered. A dead letter made pending again (:meth:`StateStore.retry_dead`) has none:
    it goes out in a new message.
    """

    id: int
    sink: str
    fingerprint: str
    alert: AlertDoc
    attempts: int = 0
    message: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that will not be retried, kept with why it failed."""

    id: int
    sink: str
    alert: AlertDoc
    attempts: int
    error: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class SinkCounts:
    """One sink's delivery rows by status."""

    pending: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One delivery row as ``balwatch outbox list`` shows it: ``error`` is the last failed
    attempt's (as the sink worded it, masked), None before any failed."""

    id: int
    sink: str
    status: Literal["pending", "dead"]
    attempts: int
    error: str | None
    updated_at: float
    alert: AlertDoc

    def to_json(self) -> dict[str, object]:
        """As ``outbox list --json`` and ``/api/outbox`` show it."""
        return {
            "id": self.id,
            "sink": self.sink,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "updated_at": iso_z(datetime.fromtimestamp(self.updated_at, UTC)),
            "alert": dict(self.alert),
        }


@dataclass(frozen=True, slots=True)
class Retried:
    """What :meth:`StateStore.retry_dead` did with the ids it was given."""

    retried: list[int]  # pending again, sent at once
    stale: list[int]  # left dead: the alert's later course made them untrue
    unknown: list[int]  # no dead letter has this id


def sort_dead(
    wanted: Sequence[int], dead: Mapping[int, AlertDoc], firing: Collection[str]
) -> Retried:
    """What :meth:`StateStore.retry_dead` does with each wanted id, given the dead letters
    (id -> alert) and the fingerprints firing now: a letter the alert's later course made
    untrue (a firing of an alert not firing now, a resolve of one that is) stays dead."""
    retried: list[int] = []
    stale: list[int] = []
    unknown: list[int] = []
    for delivery_id in wanted:
        doc = dead.get(delivery_id)
        if doc is None:
            unknown.append(delivery_id)
        elif (doc.get("event") == "resolved") == (doc.get("fingerprint") in firing):
            stale.append(delivery_id)
        else:
            retried.append(delivery_id)
    return Retried(retried, stale, unknown)


class Changes(NamedTuple):
    """Counters that move with every write made by hand, on any store on the storage."""

    silences: int  # silences added, expired or pruned
    outbox: int  # dead letters retried or dropped


OnCommit = Callable[[list[Delivery]], None]


class StateStore(abc.ABC):
    """Persistence for one daemon. ``async with store:`` opens it and closes it again.

    Writes return once committed; a failed write raises the store's own error and leaves
    nothing of itself behind. A closed store raises RuntimeError.
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the state lives, for logs and messages (never a secret)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Take the store for this process, create or upgrade its schema.

        :class:`StateError` when it cannot be used, saying why; nothing in it is changed.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes already called, then let the store go."""

    @abc.abstractmethod
    async def load(self, since: float, scope: Scope | None = None) -> SavedState:
        """What a previous run left: states, accounts, self-alerts, and per history series
        the samples from ``since`` on with the newest one before it.

        With a ``scope``, only the states, accounts and series whose owner name is in
        ``scope.owners`` (a replica taking accounts over); a store for one daemon may
        ignore it. Self-alerts are this instance's own.
        """

    # --- writes ------------------------------------------------------------------------

    @abc.abstractmethod
    async def commit(
        self, commit: AlertCommit, *, on_commit: OnCommit | None = None
    ) -> list[Delivery]:
        """Store the alerts, a pending delivery per sink, and the state that came with
        them, in one transaction; returns the new deliveries in id order.

        ``on_commit`` gets the same list on the event loop right after the transaction,
        even if the caller was cancelled meanwhile.
        """

    @abc.abstractmethod
    async def flush(self, snapshot: StateSnapshot) -> None:
        """Replace the stored alert and account states, and apply the history changes."""

    async def ack(self, delivery_id: int) -> None:
        """The sink has it: forget the delivery (and the alert, once no sink needs it)."""
        await self.ack_all((delivery_id,))

    async def fail(self, delivery_id: int, error: str, *, dead: bool) -> None:
        """Record a failed attempt; ``dead`` makes it a dead letter that is never retried."""
        await self.fail_all((delivery_id,), error, dead=dead)

    @abc.abstractmethod
    async def ack_all(self, delivery_ids: Sequence[int]) -> None:
        """:meth:`ack` for several deliveries in one transaction: a group message's. All of
        them are gone afterwards, or (on an error) none."""

    @abc.abstractmethod
    async def fail_all(self, delivery_ids: Sequence[int], error: str, *, dead: bool) -> None:
        """:meth:`fail` for several deliveries in one transaction: a group message's. Each
        gets one more attempt and ``error`` as its last error; with ``dead`` each is a dead
        letter (its ``message`` kept, for inspection)."""

    @abc.abstractmethod
    async def bundle(self, message: str, delivery_ids: Sequence[int]) -> None:
        """Record, before its first attempt, that these pending deliveries go out together
        as group message ``message``: :meth:`pending` then returns them with it, so a
        message cut off by a crash is sent again whole, as the same message.
        :meth:`retry_dead` clears it again."""

    # --- outbox reads ------------------------------------------------------------------

    @abc.abstractmethod
    async def pending(self, sink: str) -> list[Delivery]:
        """The sink's pending deliveries in id order, with their attempt counts."""

    async def claimed(self, delivery_ids: Sequence[int]) -> list[int]:
        """Which of these pending deliveries this store may still send, in the order given.

        The outbox worker asks right before each send and drops the others unsent: with
        replicas, a delivery whose claim lapsed is another replica's now. For one daemon,
        all of them.
        """
        return list(delivery_ids)

    @abc.abstractmethod
    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first; all sinks when ``sink`` is None."""

    @abc.abstractmethod
    async def documents(self) -> list[AlertDoc]:
        """Every alert document the outbox holds, pending or dead, oldest first."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, SinkCounts]:
        """Pending and dead deliveries per sink name, for every sink that has any."""

    # --- dead letters, by hand -------------------------------------------------------

    @abc.abstractmethod
    async def outbox(self, *, dead_only: bool = False) -> list[OutboxEntry]:
        """Every delivery row (only dead letters with ``dead_only``) in id order."""

    @abc.abstractmethod
    async def retry_dead(self, ids: Sequence[int] | None = None) -> Retried:
        """Make dead letters pending again, with no failed attempts (all with ``ids`` None).

        A dead letter whose alert's later course made it untrue stays dead (``stale``): a
        ``firing`` or ``repeat`` of an alert that is not firing now (no firing alert state,
        no self-alert with its fingerprint), a ``resolved`` of one that is. Sending those
        would show a resolved alert as firing (MQTT ``active/``), or the reverse. A retried
        one loses the group message it was bundled in (:attr:`Delivery.message` None): the
        worker groups it anew, rather than resending a message whose other alerts may have
        moved on. Moves :attr:`Changes.outbox` when anything was retried.
        """

    @abc.abstractmethod
    async def drop_dead(self, ids: Sequence[int]) -> list[int]:
        """Delete these dead letters (pending deliveries are left alone); returns the ids
        deleted. Moves :attr:`Changes.outbox` when any was."""

    # --- silences --------------------------------------------------------------------

    @abc.abstractmethod
    async def add_silence(self, silence: Silence) -> None:
        """Store a new silence (its id is new: one already stored is an error)."""

    @abc.abstractmethod
    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        """End the silence at ``now`` (:meth:`Silence.expired`: one already over stays as it
        is); returns it as stored now, or None when there is no silence with this id."""

    @abc.abstractmethod
    async def silences(self) -> list[Silence]:
        """Every stored silence, pending, active and expired, oldest first (by creation)."""

    @abc.abstractmethod
    async def prune_silences(self, ended_before: float) -> int:
        """Delete the silences that ended before ``ended_before``; returns how many."""

    @abc.abstractmethod
    async def changes(self) -> Changes:
        """The counters of writes made by hand: cheap, read by the daemon every second."""
