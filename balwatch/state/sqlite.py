"""The state store in SQLite: one file, ``balwatch.db``, in the state directory.

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
    Versioned per component in ``schema_version`` (:func:`migrate`): ``engine`` (alert
    states, account liveness, history samples, self-alerts), ``outbox`` and ``oncall``
    (silences, and the counters of changes made by hand).
    ``outbox_alert`` holds each document once; ``outbox_delivery`` one row per (alert, sink),
    ``pending`` until acknowledged (then deleted) or ``dead`` (kept with its last error for
    inspection); ``message`` names the group message a delivery went out in, once bundled
    (cleared when a dead letter is retried).
    A trigger deletes an alert when its last delivery row goes, so no caller has to
    remember to. Delivery ids follow the AUTOINCREMENT sequence, which never reuses
    an id even after its row is pruned, so id order is enqueue order: per-fingerprint
    ordering rests on that, across restarts too. History is written incrementally, as the
    engine's history changes (new samples, trimmed and forgotten series), so the table
    mirrors what the engine holds.

The state directory
    One daemon per directory: the store holds an flock on ``balwatch.lock`` while open. The
    CLI's silence and outbox commands open the store with ``exclusive=False``: no lock, so
    they work beside a running daemon, each change one short transaction that WAL lets run
    beside the daemon's reads (and its writes wait for, up to the busy timeout). Such a
    store never creates the database: a state directory the daemon never used is most
    likely the wrong one, and a silence written there would mute nothing. A
    directory the store creates is 0700; one that exists keeps its mode (it may be shared
    or managed by someone else, as systemd's ``StateDirectory=`` is). The database, its
    ``-wal`` and ``-shm`` files and the lock file are 0600 whatever the umask: they hold
    balances. A file that is not a balwatch database is refused before anything touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from balwatch.alert import Alert
from balwatch.rules.engine import AccountState, AlertState
from balwatch.silence import Silence
from balwatch.sink import AlertDoc
from balwatch.state.base import (
    AlertCommit,
    Changes,
    DeadLetter,
    Delivery,
    NoState,
    OnCommit,
    OutboxEntry,
    Retried,
    SavedState,
    Scope,
    SinkCounts,
    StateChange,
    StateError,
    StateSnapshot,
    StateStore,
    sort_dead,
)

DB_FILE: Final = "balwatch.db"
LOCK_FILE: Final = "balwatch.lock"  # flock held by the store while it is open
_PRIVATE: Final = 0o600

# One tuple of statements per schema version; append, never edit a released step.
ENGINE_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE engine_alert (fingerprint TEXT NOT NULL, rule TEXT NOT NULL, "
        "doc TEXT NOT NULL, PRIMARY KEY (fingerprint, rule))",
        "CREATE TABLE engine_account (account TEXT PRIMARY KEY, doc TEXT NOT NULL)",
        "CREATE TABLE engine_sample (account TEXT NOT NULL, venue TEXT NOT NULL, "
        "asset TEXT NOT NULL, metric TEXT NOT NULL, t REAL NOT NULL, value TEXT NOT NULL, "
        "PRIMARY KEY (account, venue, asset, metric, t)) WITHOUT ROWID",
    ),
    # Self-alerts firing (balwatch.selfalerts), as alert JSON documents.
    ("CREATE TABLE self_alert (fingerprint TEXT PRIMARY KEY, doc TEXT NOT NULL)",),
    # SavedState.markers: upgrades of what lives outside the database, done once.
    ("CREATE TABLE state_marker (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",),
)
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
    # The group message a pending delivery went into (StateStore.bundle).
    ("ALTER TABLE outbox_delivery ADD COLUMN message TEXT",),
)
# What people change by hand: silences, and the counters the daemon watches (Changes).
ONCALL_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE silence (id TEXT PRIMARY KEY, doc TEXT NOT NULL, "
        "ends_at REAL NOT NULL, created_at REAL NOT NULL)",
        "CREATE TABLE change_counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO change_counter VALUES ('silences', 0), ('outbox', 0)",
    ),
)
SCHEMAS: Final = (
    ("engine", ENGINE_SCHEMA),
    ("outbox", OUTBOX_SCHEMA),
    ("oncall", ONCALL_SCHEMA),
)

# A write of engine tables that goes into the next transaction; runs on the DB thread.
_StateWrite = Callable[[sqlite3.Connection], None]
_T = TypeVar("_T")


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the state database with the settings every write relies on.

    The connection is in autocommit mode: callers write ``BEGIN``/``COMMIT`` themselves, so
    a transaction's extent is visible in the code rather than implied by sqlite3's rules.
    It may only be used on the thread that opened it.
    """
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
    the components that share the file evolve independently.
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


class SqliteStateStore(StateStore):
    """The state in ``state_dir/balwatch.db``; see the module docstring."""

    def __init__(self, state_dir: Path, *, exclusive: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_FILE
        self.exclusive = exclusive
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._next: _Batch | None = None  # collecting writes while the previous one commits
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def location(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError(f"{self.path}: already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="balwatch-db")
        try:
            self._lock_fd, self._conn = await asyncio.get_running_loop().run_in_executor(
                executor, _open, self.state_dir, self.exclusive
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, self._release)
        self._executor.shutdown()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the flock goes with it

    async def load(self, since: float, scope: Scope | None = None) -> SavedState:
        # One daemon per state_dir: it speaks for every account, the scope changes nothing.
        self._check_open()
        try:
            return await self._run(_read, since)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot read the state database ({exc})") from None

    # --- writes ------------------------------------------------------------------------

    async def commit(
        self, commit: AlertCommit, *, on_commit: OnCommit | None = None
    ) -> list[Delivery]:
        # Encode here, on the loop: a document that cannot be encoded fails alone, before
        # anything of this commit is queued.
        stored = [(routed, _encode(routed.alert)) for routed in commit.alerts if routed.sinks]
        batch = self._batch()
        if commit.states or commit.self_alerts is not None or commit.markers:
            batch.writes.append(
                _state_changes(commit.states, commit.self_alerts, dict(commit.markers))
            )
        offset = len(batch.sinks)
        for routed, doc in stored:
            batch.alerts.append((doc, len(routed.sinks)))
            batch.sinks.extend(routed.sinks)
        deliveries: list[Delivery] = []

        def committed(done: asyncio.Future[int]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            delivery_id = done.result() + offset
            for routed, _ in stored:
                for sink in routed.sinks:
                    deliveries.append(Delivery(delivery_id, sink, routed.fingerprint, routed.alert))
                    delivery_id += 1
            if on_commit is not None:
                on_commit(deliveries)

        batch.done.add_done_callback(committed)
        await asyncio.shield(batch.done)
        return deliveries

    async def flush(self, snapshot: StateSnapshot) -> None:
        batch = self._batch()
        batch.writes.append(_snapshot_write(snapshot))
        await asyncio.shield(batch.done)

    async def ack_all(self, delivery_ids: Sequence[int]) -> None:
        batch = self._batch()
        batch.acks.extend(delivery_ids)
        await asyncio.shield(batch.done)

    async def fail_all(self, delivery_ids: Sequence[int], error: str, *, dead: bool) -> None:
        batch = self._batch()
        status = "dead" if dead else "pending"
        batch.fails.extend((error, status, delivery_id) for delivery_id in delivery_ids)
        await asyncio.shield(batch.done)

    async def bundle(self, message: str, delivery_ids: Sequence[int]) -> None:
        batch = self._batch()
        batch.bundles.extend((message, delivery_id) for delivery_id in delivery_ids)
        await asyncio.shield(batch.done)

    def _batch(self) -> _Batch:
        """The batch that the next transaction will write; starts the writer if idle."""
        self._check_open()
        if self._next is None:
            self._next = _Batch(asyncio.get_running_loop().create_future())
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._write_batches(), name="state-commit")
        return self._next

    async def _write_batches(self) -> None:
        try:
            while self._next is not None:
                batch, self._next = self._next, None
                try:
                    first = await self._run(_write, batch)
                except Exception as error:
                    batch.done.set_exception(error)
                else:
                    batch.done.set_result(first)
        finally:
            self._flusher = None

    # --- reads -------------------------------------------------------------------------

    async def pending(self, sink: str) -> list[Delivery]:
        rows: list[tuple[int, int, str | None, str]] = await self._query(
            "SELECT d.id, d.attempts, d.message, a.doc FROM outbox_delivery d "
            "JOIN outbox_alert a ON a.id = d.alert "
            "WHERE d.sink = ? AND d.status = 'pending' ORDER BY d.id",
            sink,
        )
        deliveries = []
        for delivery_id, attempts, message, doc in rows:
            alert = json.loads(doc)
            deliveries.append(
                Delivery(delivery_id, sink, alert["fingerprint"], alert, attempts, message=message)
            )
        return deliveries

    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        rows: list[tuple[int, str, int, str, float, str]] = await self._query(
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
        rows: list[tuple[str]] = await self._query("SELECT doc FROM outbox_alert ORDER BY id")
        return [json.loads(doc) for (doc,) in rows]

    async def counts(self) -> dict[str, SinkCounts]:
        rows: list[tuple[str, Literal["pending", "dead"], int]] = await self._query(
            "SELECT sink, status, count(*) FROM outbox_delivery GROUP BY sink, status"
        )
        found: dict[str, dict[str, int]] = {}
        for sink, status, count in rows:
            found.setdefault(sink, {})[status] = count
        return {sink: SinkCounts(**by_status) for sink, by_status in found.items()}

    async def outbox(self, *, dead_only: bool = False) -> list[OutboxEntry]:
        rows: list[tuple[int, str, Literal["pending", "dead"], int, str | None, float, str]]
        rows = await self._query(
            "SELECT d.id, d.sink, d.status, d.attempts, d.last_error, d.updated_at, a.doc "
            "FROM outbox_delivery d JOIN outbox_alert a ON a.id = d.alert "
            "WHERE ?1 = 0 OR d.status = 'dead' ORDER BY d.id",
            int(dead_only),
        )
        return [
            OutboxEntry(i, sink, status, attempts, error, updated, json.loads(doc))
            for i, sink, status, attempts, error, updated, doc in rows
        ]

    async def retry_dead(self, ids: Sequence[int] | None = None) -> Retried:
        return await self._transact(_retry_dead, None if ids is None else list(ids))

    async def drop_dead(self, ids: Sequence[int]) -> list[int]:
        return await self._transact(_drop_dead, list(ids))

    async def add_silence(self, silence: Silence) -> None:
        await self._transact(_add_silence, silence)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        return await self._transact(_expire_silence, silence_id, now)

    async def silences(self) -> list[Silence]:
        rows: list[tuple[str]] = await self._query(
            "SELECT doc FROM silence ORDER BY created_at, id"
        )
        return [Silence.from_record(json.loads(doc)) for (doc,) in rows]

    async def prune_silences(self, ended_before: float) -> int:
        return await self._transact(_prune_silences, ended_before)

    async def changes(self) -> Changes:
        rows: list[tuple[str, int]] = await self._query("SELECT name, value FROM change_counter")
        counters = dict(rows)
        return Changes(silences=counters["silences"], outbox=counters["outbox"])

    async def _transact(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(connection, *args)`` in a transaction of its own, on the database thread."""

        def run(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn, *args)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        self._check_open()
        return await self._run(run)

    async def _query(self, sql: str, *args: object) -> list[Any]:
        def run(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, args).fetchall()

        self._check_open()
        try:
            return await self._run(run)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot read the state database ({exc})") from None

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(connection, *args)`` on the database thread."""
        assert self._executor is not None and self._conn is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, work, self._conn, *args
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"state store {self.path} is closed")
        if self._executor is None:
            raise RuntimeError(f"state store {self.path} is not open")


@dataclass(slots=True)
class _Batch:
    """Writes for one transaction. Every caller awaits ``done`` (shielded: it is shared);
    its result is the first new delivery id, the others following in ``sinks`` order."""

    done: asyncio.Future[int]
    alerts: list[tuple[str, int]] = field(default_factory=list)  # (document, deliveries)
    sinks: list[str] = field(default_factory=list)  # one per new delivery
    acks: list[int] = field(default_factory=list)
    fails: list[tuple[str, str, int]] = field(default_factory=list)  # (error, status, id)
    bundles: list[tuple[str, int]] = field(default_factory=list)  # (message, id)
    writes: list[_StateWrite] = field(default_factory=list)  # in call order: later wins


def _encode(alert: AlertDoc) -> str:
    return json.dumps(alert, ensure_ascii=False, separators=(",", ":"))


# --- opening ---------------------------------------------------------------------------


def _open(state_dir: Path, exclusive: bool) -> tuple[int | None, sqlite3.Connection]:
    """Take the directory, check the file is ours, open and migrate it: (lock, connection).

    Not ``exclusive``: no lock (None), and the database must exist already.
    """
    path = state_dir / DB_FILE
    if not exclusive and not path.is_file():
        raise NoState(
            f"{path}: no state database here; has `balwatch run` used this state_dir? "
            "(state_dir defaults to $STATE_DIRECTORY, which systemd sets for the service: "
            "set it, or state_dir in the config)"
        )
    _make_state_dir(state_dir)
    lock = _lock(state_dir) if exclusive else None
    try:
        _refuse_foreign(path)
        _make_private(path)
        try:
            conn = open_db(path)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: not a usable SQLite database ({exc})") from None
        try:
            for component, steps in SCHEMAS:
                migrate(conn, component, steps)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError):  # tables too new, or corrupt
                raise StateError(f"{path}: cannot use the state database ({exc})") from None
            raise
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return lock, conn


def _make_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` 0700 (parents as the umask says); an existing one stays as it is."""
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if state_dir.is_dir():
            return
        raise StateError(f"{state_dir}: cannot be the state directory (not a directory)") from None
    except OSError as exc:
        raise StateError(
            f"{state_dir}: cannot be the state directory ({exc.strerror or exc})"
        ) from None
    os.chmod(state_dir, 0o700)  # mkdir's mode is cut by the umask


def _lock(state_dir: Path) -> int:
    """Hold ``state_dir`` for this process: the file descriptor of the locked lock file.

    Two daemons on one state directory would deliver the same outbox twice and overwrite
    each other's alert states; the second gets a StateError instead. The lock is the
    kernel's (flock), so it goes with the process, however it ends.
    """
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, _PRIVATE)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot lock ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(
            f"{state_dir}: another balwatch is running with this state directory"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # ours now; 0600 also if an older balwatch made it
        os.fchmod(fd, _PRIVATE)
    return fd


def _refuse_foreign(path: Path) -> None:
    """Look before touching: opening for real switches the file to WAL, which rewrites
    its header, so a database that is not ours is inspected read-only first."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        # as_uri() escapes '%', '#' and '?', which a raw "file:" URI would misread.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: not a usable SQLite database ({exc})") from None
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: not a usable SQLite database ({exc})") from None
    finally:
        conn.close()
    tables = {name for (name,) in rows}
    if tables and "schema_version" not in tables:
        raise StateError(
            f"{path}: holds tables of another program ({', '.join(sorted(tables)[:3])}); "
            "point state_dir at a directory of balwatch's own"
        )


def _make_private(path: Path) -> None:
    """The database, and SQLite's ``-wal`` and ``-shm`` beside it, readable by us alone.

    SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so a database
    created 0600 here keeps them 0600 too; files an older balwatch made are tightened.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(name.stat().st_mode)
                if mode & 0o077:
                    _chmod(name, mode & 0o700)
        return
    except OSError as exc:
        raise StateError(f"{path}: cannot create ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, _PRIVATE)  # the mode given to open() is cut by the umask
    finally:
        os.close(fd)


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise StateError(f"{path}: cannot make it private ({exc.strerror or exc})") from None


# --- reading and writing, on the database thread ----------------------------------------


def _read(conn: sqlite3.Connection, since: float) -> SavedState:
    saved = SavedState()
    for (doc,) in conn.execute("SELECT doc FROM engine_alert"):
        saved.alerts.append(AlertState.from_json(json.loads(doc)))
    for (doc,) in conn.execute("SELECT doc FROM engine_account"):
        saved.accounts.append(AccountState.from_json(json.loads(doc)))
    # Per series, the samples from ``since`` on and the newest one before it: that one is
    # the value at a window's start after a stop longer than the window, as it would be
    # for a daemon that kept running through the same gap.
    rows = conn.execute(
        "SELECT account, venue, asset, metric, t, value FROM engine_sample AS s "
        "WHERE t >= COALESCE((SELECT MAX(t) FROM engine_sample AS o WHERE o.account = "
        "s.account AND o.venue = s.venue AND o.asset = s.asset AND o.metric = s.metric "
        "AND o.t <= ?), ?) ORDER BY account, venue, asset, metric, t",
        (since, since),
    )
    saved.samples = [((a, v, s, m), t, Decimal(value)) for a, v, s, m, t, value in rows]
    for (doc,) in conn.execute("SELECT doc FROM self_alert"):
        saved.self_alerts.append(Alert.from_json(json.loads(doc)))
    saved.markers = dict(conn.execute("SELECT name, version FROM state_marker"))
    return saved


_DELETE_SERIES: Final = (
    "DELETE FROM engine_sample WHERE account = ? AND venue = ? AND asset = ? AND metric = ?"
)
_TRIM_SERIES: Final = (
    "DELETE FROM engine_sample "
    "WHERE account = ? AND venue = ? AND asset = ? AND metric = ? AND t < ?"
)


def _snapshot_write(snapshot: StateSnapshot) -> _StateWrite:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM engine_alert")
        conn.executemany(
            "INSERT INTO engine_alert VALUES (?, ?, ?)",
            [(s.fingerprint, s.rule, json.dumps(s.to_json())) for s in snapshot.alerts],
        )
        conn.execute("DELETE FROM engine_account")
        conn.executemany(
            "INSERT INTO engine_account VALUES (?, ?)",
            [(a.account, json.dumps(a.to_json())) for a in snapshot.accounts],
        )
        history = snapshot.history
        conn.executemany(_DELETE_SERIES, history.forgotten)
        conn.executemany(_TRIM_SERIES, [(*key, t) for key, t in history.trimmed])
        conn.executemany(
            "INSERT OR REPLACE INTO engine_sample VALUES (?, ?, ?, ?, ?, ?)",
            [(*key, t, str(v)) for key, t, v in history.samples],
        )

    return write


def _state_changes(
    changes: Sequence[StateChange], self_alerts: Sequence[Alert] | None, markers: dict[str, int]
) -> _StateWrite:
    """Only the states behind a commit's alerts: an alert commit costs the same however
    many other alerts are pending or firing; the periodic flush writes the rest."""

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO engine_alert VALUES (?, ?, ?)",
            [(fp, rule, json.dumps(s.to_json())) for fp, rule, s in changes if s is not None],
        )
        conn.executemany(
            "DELETE FROM engine_alert WHERE fingerprint = ? AND rule = ?",
            [(fp, rule) for fp, rule, s in changes if s is None],
        )
        if self_alerts is not None:
            conn.execute("DELETE FROM self_alert")  # a handful of rows: rewrite them whole
            conn.executemany(
                "INSERT INTO self_alert VALUES (?, ?)",
                [(a.fingerprint, json.dumps(a.to_json())) for a in self_alerts],
            )
        conn.executemany("INSERT OR REPLACE INTO state_marker VALUES (?, ?)", markers.items())

    return write


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
        if batch.bundles:
            conn.executemany("UPDATE outbox_delivery SET message = ? WHERE id = ?", batch.bundles)
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


# --- by hand: silences and dead letters (each in a transaction of its own) ---------------


def _bump(conn: sqlite3.Connection, counter: str) -> None:
    conn.execute("UPDATE change_counter SET value = value + 1 WHERE name = ?", (counter,))


def _add_silence(conn: sqlite3.Connection, silence: Silence) -> None:
    conn.execute(
        "INSERT INTO silence (id, doc, ends_at, created_at) VALUES (?, ?, ?, ?)",
        (silence.id, json.dumps(silence.to_record()), silence.ends_at, silence.created_at),
    )
    _bump(conn, "silences")


def _expire_silence(conn: sqlite3.Connection, silence_id: str, now: float) -> Silence | None:
    row = conn.execute("SELECT doc FROM silence WHERE id = ?", (silence_id,)).fetchone()
    if row is None:
        return None
    stored = Silence.from_record(json.loads(row[0]))
    ended = stored.expired(now)
    if ended is not stored:
        conn.execute(
            "UPDATE silence SET doc = ?, ends_at = ? WHERE id = ?",
            (json.dumps(ended.to_record()), ended.ends_at, silence_id),
        )
        _bump(conn, "silences")
    return ended


def _prune_silences(conn: sqlite3.Connection, ended_before: float) -> int:
    pruned = conn.execute("DELETE FROM silence WHERE ends_at < ?", (ended_before,)).rowcount
    if pruned:
        _bump(conn, "silences")
    return pruned


def _retry_dead(conn: sqlite3.Connection, ids: list[int] | None) -> Retried:
    rows = conn.execute(
        "SELECT d.id, a.doc FROM outbox_delivery d JOIN outbox_alert a ON a.id = d.alert "
        "WHERE d.status = 'dead' ORDER BY d.id"
    ).fetchall()
    dead = {delivery_id: json.loads(doc) for delivery_id, doc in rows}
    wanted = list(dead) if ids is None else list(dict.fromkeys(ids))
    firing = {
        fingerprint
        for (fingerprint,) in conn.execute(
            "SELECT fingerprint FROM engine_alert WHERE json_extract(doc, '$.phase') = 'firing' "
            "UNION SELECT fingerprint FROM self_alert"
        )
    }
    retried = sort_dead(wanted, dead, firing)
    conn.executemany(
        "UPDATE outbox_delivery SET status = 'pending', attempts = 0, message = NULL, "
        "updated_at = ? WHERE id = ?",
        [(time.time(), delivery_id) for delivery_id in retried.retried],
    )
    if retried.retried:
        _bump(conn, "outbox")
    return retried


def _drop_dead(conn: sqlite3.Connection, ids: list[int]) -> list[int]:
    dropped = [
        delivery_id
        for delivery_id in dict.fromkeys(ids)
        if conn.execute(
            "DELETE FROM outbox_delivery WHERE id = ? AND status = 'dead'", (delivery_id,)
        ).rowcount
    ]
    if dropped:
        _bump(conn, "outbox")
    return dropped
