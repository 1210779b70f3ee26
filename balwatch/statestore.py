"""Engine state in the state database: alert states, account liveness, metric history.

Alert and account states are written in the same transaction as the alerts they produced
(see :meth:`balwatch.outbox.store.OutboxStore.enqueue_many`), and otherwise every few
seconds. History is written incrementally, as the engine's history changes (new samples, trimmed
and forgotten series), so the table mirrors what the engine holds; a crash loses at most
the samples since the last flush, which only shortens a change window's past, never
invents one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Final

from balwatch.alert import Alert
from balwatch.outbox.store import migrate, open_db
from balwatch.rules.engine import AccountState, AlertState, Engine
from balwatch.rules.history import HistoryChanges, HistoryKey

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
    # Upgrades of what lives outside the database, done once: name -> version reached
    # (the MQTT topic layout of retained alerts, balwatch.topiclayout).
    ("CREATE TABLE state_marker (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",),
)
# The state_marker row of the retained MQTT topics' layout.
TOPIC_LAYOUT_MARKER: Final = "mqtt_topic_layout"

Sample = tuple[HistoryKey, float, Decimal]
# Held by the running daemon (state_lock).
LOCK_FILE: Final = "balwatch.lock"


class StateError(Exception):
    """The state database cannot be used; the file is left as it is."""


@dataclass
class Saved:
    alerts: list[AlertState] = field(default_factory=list)
    accounts: list[AccountState] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    self_alerts: list[Alert] = field(default_factory=list)
    topic_layout: int = 0  # 0: never recorded, as in a database older than the marker


def prepare(path: Path, since: float) -> Saved:
    """Create or upgrade the engine tables and read what a previous run left.

    A file that is not SQLite, is corrupt, or belongs to another program is a
    :class:`StateError` naming the file; nothing in it is changed.
    """
    _make_state_dir(path.parent)
    _refuse_foreign(path)
    try:
        conn = open_db(path)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: not a usable SQLite database ({exc})") from None
    try:
        migrate(conn, "engine", ENGINE_SCHEMA)
        return _read(conn, since)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: cannot read the state database ({exc})") from None
    finally:
        conn.close()


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir`` for this process while the block runs.

    Two daemons on one state directory would deliver the same outbox twice and overwrite
    each other's alert states; the second gets a StateError instead. The lock is the
    kernel's (flock), so it goes with the process, however it ends.
    """
    _make_state_dir(state_dir)
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"{state_dir}: cannot lock ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"{state_dir}: another balwatch is running with this state directory"
            ) from None
        yield
    finally:
        os.close(fd)


def _make_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"{state_dir}: cannot be the state directory ({exc.strerror or exc})"
        ) from None


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


def _read(conn: sqlite3.Connection, since: float) -> Saved:
    saved = Saved()
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
    row = conn.execute(
        "SELECT version FROM state_marker WHERE name = ?", (TOPIC_LAYOUT_MARKER,)
    ).fetchone()
    saved.topic_layout = 0 if row is None else int(row[0])
    return saved


def restore(engine: Engine, saved: Saved, now: float) -> None:
    """Load saved history into the engine (states are restored by ``Engine.restore``)."""
    for key, t, value in saved.samples:
        if t <= now:
            engine.history.record(key, t, value)
    engine.history.mark_saved()
    engine.drop_unused_history()  # metrics no rule reads any more: gone at the next flush


_DELETE_SERIES: Final = (
    "DELETE FROM engine_sample WHERE account = ? AND venue = ? AND asset = ? AND metric = ?"
)
_TRIM_SERIES: Final = (
    "DELETE FROM engine_sample "
    "WHERE account = ? AND venue = ? AND asset = ? AND metric = ? AND t < ?"
)


def writer(
    alerts: Iterable[AlertState],
    accounts: Iterable[AccountState] | None = None,
    history: HistoryChanges | None = None,
) -> Callable[[sqlite3.Connection], None]:
    """A state write for the outbox's transaction.

    The snapshot is taken now, on the loop, so it is the engine's state at this moment;
    the text encoding is left to the DB thread, off the loop: the snapshot's dicts are
    copies and samples are immutable.
    """
    alert_docs = [(s.fingerprint, s.rule, s.to_json()) for s in alerts]
    account_docs = None if accounts is None else [(a.account, a.to_json()) for a in accounts]

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM engine_alert")
        conn.executemany(
            "INSERT INTO engine_alert VALUES (?, ?, ?)",
            [(fp, rule, json.dumps(doc)) for fp, rule, doc in alert_docs],
        )
        if account_docs is not None:
            conn.execute("DELETE FROM engine_account")
            conn.executemany(
                "INSERT INTO engine_account VALUES (?, ?)",
                [(account, json.dumps(doc)) for account, doc in account_docs],
            )
        if history is not None:
            conn.executemany(_DELETE_SERIES, history.forgotten)
            conn.executemany(_TRIM_SERIES, [(*key, t) for key, t in history.trimmed])
            conn.executemany(
                "INSERT OR REPLACE INTO engine_sample VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, t, str(v)) for key, t, v in history.samples],
            )

    return write


def changes_writer(
    changed: Iterable[tuple[str, str, AlertState | None]],
    self_alerts: Iterable[Alert] = (),
) -> Callable[[sqlite3.Connection], None]:
    """The states behind a batch of alerts, as (fingerprint, rule, state or None when it
    went inactive), and the self-alerts firing now: what must commit with those alerts.
    Writing only these keeps an alert commit independent of how many other alerts are
    pending or firing; the periodic flush writes the rest."""
    upserts = [(fp, rule, json.dumps(s.to_json())) for fp, rule, s in changed if s is not None]
    deletes = [(fp, rule) for fp, rule, s in changed if s is None]
    firing = [(a.fingerprint, json.dumps(a.to_json())) for a in self_alerts]

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR REPLACE INTO engine_alert VALUES (?, ?, ?)", upserts)
        conn.executemany("DELETE FROM engine_alert WHERE fingerprint = ? AND rule = ?", deletes)
        conn.execute("DELETE FROM self_alert")  # a handful of rows: rewrite them whole
        conn.executemany("INSERT INTO self_alert VALUES (?, ?)", firing)

    return write


def topic_layout_writer(version: int) -> Callable[[sqlite3.Connection], None]:
    """Records that the retained MQTT topics are in layout ``version`` now."""

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO state_marker VALUES (?, ?)", (TOPIC_LAYOUT_MARKER, version)
        )

    return write
