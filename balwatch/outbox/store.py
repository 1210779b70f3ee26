"""The durable outbox: alert documents and their per-sink deliveries in SQLite.

Durability
    The database is in WAL mode with ``synchronous=FULL``: a transaction is on disk when
    COMMIT returns, so an alert survives a SIGKILL *and* a power cut or kernel panic. With
    ``NORMAL`` a SIGKILL loses nothing either, but an OS crash may lose the last commits;
    ``FULL`` costs one WAL fsync per commit, and group commit (below) spreads that over every
    operation queued meanwhile, so under load the cost per alert shrinks as the load grows
    (``bench/delivery.py`` shows no difference between the two through the MQTT sink).

Group commit
    sqlite3 blocks, so all SQL runs on one dedicated thread that owns the connection (the
    event loop never waits for the disk). Writes queue up while a transaction is being
    written; the next transaction takes all of them at once, in a few ``executemany``
    calls. A transaction commits or fails as a whole, and every caller in it gets the
    outcome: the only failures are the database's own (disk full, I/O error).

Schema
    ``outbox_alert`` holds each document once; ``outbox_delivery`` one row per (alert, sink),
    ``pending`` until acknowledged (then deleted) or ``dead`` (kept with its last error for
    inspection). A trigger deletes an alert when its last delivery row goes, so no caller
    has to remember to. Delivery ids follow the AUTOINCREMENT sequence, which never reuses
    an id even after its row is pruned, so id order is enqueue order: per-fingerprint
    ordering rests on that, across restarts too.

:func:`open_db` and :func:`migrate` are the one place that opens ``balwatch.db`` and versions
its tables; other state (alert states, history) reuses them with its own component name.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from balwatch.sink import AlertDoc

DB_FILE: Final = "balwatch.db"

# Writes to other tables that must commit together with outbox changes; runs on the DB thread.
StateWrite = Callable[[sqlite3.Connection], None]

# One tuple of statements per schema version; append, never edit a released step.
OUTBOX_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE outbox_alert (
            id INTEGER PRIMARY KEY,
            doc TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE outbox_delivery (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alert INTEGER NOT NULL REFERENCES outbox_alert (id),
            sink TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX outbox_delivery_by_sink ON outbox_delivery (sink, status, id)",
        "CREATE INDEX outbox_delivery_by_alert ON outbox_delivery (alert)",
        """CREATE TRIGGER outbox_delivery_prune AFTER DELETE ON outbox_delivery
            WHEN NOT EXISTS (SELECT 1 FROM outbox_delivery WHERE alert = OLD.alert)
            BEGIN DELETE FROM outbox_alert WHERE id = OLD.alert; END""",
    ),
)


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the state database with the settings every user relies on.

    The connection is in autocommit mode: callers write ``BEGIN``/``COMMIT`` themselves, so
    a transaction's extent is visible in the code rather than implied by sqlite3's rules.
    It may only be used on the thread that opened it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, component: str, steps: Sequence[Sequence[str]]) -> None:
    """Bring ``component``'s tables to version ``len(steps)``, each step in one transaction.

    Versions are kept per component in ``schema_version`` (not ``PRAGMA user_version``), so
    modules that own different tables in the same file evolve independently.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT version FROM schema_version WHERE component = ?", (component,)
        ).fetchone()
        current = 0 if row is None else int(row[0])
        if current > len(steps):
            raise sqlite3.DatabaseError(
                f"{component} tables are at version {current}, newer than this balwatch "
                f"({len(steps)}); upgrade balwatch or use another state_dir"
            )
        for step in steps[current:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, len(steps)),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dataclass(slots=True, eq=False)
class Delivery:
    """One alert on its way to one sink; ``attempts`` counts the failed tries so far."""

    id: int
    sink: str
    fingerprint: str
    alert: AlertDoc
    attempts: int = 0


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


def _fingerprint_of(alert: AlertDoc) -> str:
    value = alert.get("fingerprint")
    if not isinstance(value, str) or not value:
        raise ValueError("alert document has no fingerprint")
    return value


class OutboxStore:
    """Outbox persistence. Open with :meth:`open`; each write returns once committed."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor
        self._next: _Batch | None = None  # collecting writes while the previous one commits
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> OutboxStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="balwatch-db")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _open_outbox, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor)

    async def close(self) -> None:
        """Finish queued writes, then close the connection."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown()

    # --- writes ------------------------------------------------------------------------

    async def enqueue(self, alert: AlertDoc, sinks: Sequence[str]) -> list[Delivery]:
        """Store ``alert`` once and a pending delivery per sink, in one transaction."""
        return await self.enqueue_many([(alert, sinks)])

    async def enqueue_many(
        self,
        items: Sequence[tuple[AlertDoc, Sequence[str]]],
        *,
        on_commit: Callable[[list[Delivery]], None] | None = None,
        also: StateWrite | None = None,
    ) -> list[Delivery]:
        """:meth:`enqueue` for several alerts in one transaction; deliveries in id order.

        ``on_commit`` gets the deliveries on the event loop right after the commit, even if
        the caller was cancelled meanwhile, and before any later commit's ``on_commit``.
        An alert for no sink is not stored: nothing would ever deliver or prune it.
        ``also`` runs in the same transaction: the engine state that produced these
        alerts commits with them, so a crash can neither lose them nor send them twice.
        """
        # Validate and encode here: a bad document fails alone, before anything is queued.
        prepared = [
            (alert, _fingerprint_of(alert), _encode(alert), list(dict.fromkeys(sinks)))
            for alert, sinks in items
            if sinks
        ]
        if not prepared:
            if also is not None:
                await self.write(also)
            return []
        batch = self._batch()
        if also is not None:
            batch.writes.append(also)
        offset = len(batch.sinks)
        for _, _, doc, names in prepared:
            batch.alerts.append((doc, len(names)))
            batch.sinks.extend(names)
        deliveries: list[Delivery] = []

        def committed(done: asyncio.Future[int]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            delivery_id = done.result() + offset
            for alert, fingerprint, _, names in prepared:
                for sink in names:
                    deliveries.append(Delivery(delivery_id, sink, fingerprint, alert))
                    delivery_id += 1
            if on_commit is not None:
                on_commit(deliveries)

        batch.done.add_done_callback(committed)
        await asyncio.shield(batch.done)
        return deliveries

    async def write(self, state: StateWrite) -> None:
        """Run ``state`` (other tables of the same database) in the next transaction."""
        batch = self._batch()
        batch.writes.append(state)
        await asyncio.shield(batch.done)

    async def ack(self, delivery_id: int) -> None:
        """The sink has it: forget the delivery (and the alert, once no sink needs it)."""
        batch = self._batch()
        batch.acks.append(delivery_id)
        await asyncio.shield(batch.done)

    async def fail(self, delivery_id: int, error: str, *, dead: bool) -> None:
        """Record a failed attempt; ``dead`` makes it a dead letter that is never retried."""
        batch = self._batch()
        batch.fails.append((error, "dead" if dead else "pending", delivery_id))
        await asyncio.shield(batch.done)

    def _batch(self) -> _Batch:
        """The batch that the next transaction will write; starts the writer if idle."""
        if self._closed:
            raise RuntimeError("outbox store is closed")
        if self._next is None:
            self._next = _Batch(asyncio.get_running_loop().create_future())
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush(), name="outbox-commit")
        return self._next

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._next is not None:
                batch, self._next = self._next, None
                try:
                    first = await loop.run_in_executor(self._executor, _write, self._conn, batch)
                except Exception as error:
                    batch.done.set_exception(error)
                else:
                    batch.done.set_result(first)
        finally:
            self._flusher = None

    # --- reads -------------------------------------------------------------------------

    async def pending(self, sink: str) -> list[Delivery]:
        """The sink's pending deliveries in enqueue order: what a restart must resume."""
        rows: list[tuple[int, int, str]] = await self._read(
            "SELECT d.id, d.attempts, a.doc FROM outbox_delivery d "
            "JOIN outbox_alert a ON a.id = d.alert "
            "WHERE d.sink = ? AND d.status = 'pending' ORDER BY d.id",
            sink,
        )
        deliveries = []
        for delivery_id, attempts, doc in rows:
            alert = json.loads(doc)
            deliveries.append(
                Delivery(delivery_id, sink, _fingerprint_of(alert), alert, attempts=attempts)
            )
        return deliveries

    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first; all sinks when ``sink`` is None."""
        rows: list[tuple[int, str, int, str, float, str]] = await self._read(
            "SELECT d.id, d.sink, d.attempts, d.last_error, d.updated_at, a.doc "
            "FROM outbox_delivery d JOIN outbox_alert a ON a.id = d.alert "
            "WHERE d.status = 'dead' AND (?1 IS NULL OR d.sink = ?1) ORDER BY d.id",
            sink,
        )
        return [
            DeadLetter(i, name, json.loads(doc), attempts, error, failed_at)
            for i, name, attempts, error, failed_at, doc in rows
        ]

    async def documents(self) -> list[AlertDoc]:
        """Every alert document the outbox holds, pending or dead, oldest first."""
        rows: list[tuple[str]] = await self._read("SELECT doc FROM outbox_alert ORDER BY id")
        return [json.loads(doc) for (doc,) in rows]

    async def counts(self) -> dict[str, SinkCounts]:
        """Pending and dead deliveries per sink name, for every sink that has any."""
        rows: list[tuple[str, Literal["pending", "dead"], int]] = await self._read(
            "SELECT sink, status, count(*) FROM outbox_delivery GROUP BY sink, status"
        )
        found: dict[str, dict[str, int]] = {}
        for sink, status, count in rows:
            found.setdefault(sink, {})[status] = count
        return {sink: SinkCounts(**by_status) for sink, by_status in found.items()}

    async def _read(self, sql: str, *args: object) -> list[Any]:
        if self._closed:
            raise RuntimeError("outbox store is closed")

        def run() -> list[Any]:
            return self._conn.execute(sql, args).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)


@dataclass(slots=True)
class _Batch:
    """Writes for one transaction. Every caller awaits ``done`` (shielded: it is shared);
    its result is the first new delivery id, the others following in ``sinks`` order."""

    done: asyncio.Future[int]
    alerts: list[tuple[str, int]] = field(default_factory=list)  # (document, deliveries)
    sinks: list[str] = field(default_factory=list)  # one per new delivery
    acks: list[int] = field(default_factory=list)
    fails: list[tuple[str, str, int]] = field(default_factory=list)  # (error, status, id)
    writes: list[StateWrite] = field(default_factory=list)  # in call order: later wins


def _encode(alert: AlertDoc) -> str:
    return json.dumps(alert, ensure_ascii=False, separators=(",", ":"))


def _open_outbox(path: Path) -> sqlite3.Connection:
    conn = open_db(path)
    try:
        migrate(conn, "outbox", OUTBOX_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _write(conn: sqlite3.Connection, batch: _Batch) -> int:
    """Commit one batch on the database thread; returns the first new delivery id.

    A handful of ``executemany`` calls whatever the batch size: each call into SQLite hands
    the GIL back and forth with the event loop, so their number, not the rows, sets the cost.
    Ids are assigned here, in order, while the write lock is held.
    """
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        first = 0
        if batch.alerts:
            alert_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM outbox_alert").fetchone()[
                0
            ]
            first = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM sqlite_sequence "
                "WHERE name = 'outbox_delivery'"
            ).fetchone()[0]
            alerts: list[tuple[int, str, float]] = []
            deliveries: list[tuple[int, int, str, float]] = []
            sinks = iter(batch.sinks)
            for doc, count in batch.alerts:
                alerts.append((alert_id, doc, now))
                deliveries.extend(
                    (first + len(deliveries), alert_id, next(sinks), now) for _ in range(count)
                )
                alert_id += 1
            conn.executemany(
                "INSERT INTO outbox_alert (id, doc, created_at) VALUES (?, ?, ?)", alerts
            )
            conn.executemany(
                "INSERT INTO outbox_delivery (id, alert, sink, updated_at) VALUES (?, ?, ?, ?)",
                deliveries,
            )
        if batch.acks:
            conn.executemany("DELETE FROM outbox_delivery WHERE id = ?", [(i,) for i in batch.acks])
        if batch.fails:
            conn.executemany(
                "UPDATE outbox_delivery SET attempts = attempts + 1, last_error = ?, "
                "status = ?, updated_at = ? WHERE id = ?",
                [(error, status, now, i) for error, status, i in batch.fails],
            )
        for write in batch.writes:
            write(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return first
