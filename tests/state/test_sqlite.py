"""The SQLite store's own promises, beyond the interface: the file, its settings and schema,
group commit, the lock on the state directory, and who may read the files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from balwatch.rules.history import HistoryChanges
from balwatch.state import sqlite as sqlite_module
from balwatch.state.base import AlertCommit, RoutedAlert, Scope, StateError, StateSnapshot
from balwatch.state.sqlite import (
    DB_FILE,
    LOCK_FILE,
    OUTBOX_SCHEMA,
    SqliteStateStore,
    migrate,
    open_db,
)
from tests.outbox.doubles import alert
from tests.state.backends import REFUSAL


def query(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read with a connection of our own, as another process would see the file."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, args).fetchall()


def enqueue(store: SqliteStateStore, doc: dict[str, Any], *sinks: str) -> Any:
    return store.commit(AlertCommit([RoutedAlert(doc, sinks)]))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_open_db_uses_wal_with_full_sync(tmp_path: Path) -> None:
    conn = open_db(tmp_path / DB_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    finally:
        conn.close()


def test_migrate_applies_new_steps_once_per_component(tmp_path: Path) -> None:
    conn = open_db(tmp_path / DB_FILE)
    try:
        migrate(conn, "outbox", OUTBOX_SCHEMA)
        migrate(conn, "outbox", OUTBOX_SCHEMA)  # already there: no error
        steps = [["CREATE TABLE alerts_state (x INTEGER)"]]
        migrate(conn, "alerts", steps)
        migrate(conn, "alerts", [*steps, ["ALTER TABLE alerts_state ADD COLUMN y TEXT"]])
        versions = conn.execute("SELECT component, version FROM schema_version ORDER BY 1")
        assert versions.fetchall() == [("alerts", 2), ("outbox", len(OUTBOX_SCHEMA))]
        assert [r[1] for r in conn.execute("PRAGMA table_info(alerts_state)")] == ["x", "y"]
    finally:
        conn.close()


def test_a_failed_migration_step_leaves_the_version_unchanged(tmp_path: Path) -> None:
    conn = open_db(tmp_path / DB_FILE)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, "alerts", [["CREATE TABLE t (x)", "NOT SQL"]])
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone() == (
            0,
        )
        migrate(conn, "alerts", [["CREATE TABLE t (x)"]])
    finally:
        conn.close()


# The tables as balwatch 0.1 released them, frozen here: a database an installation has
# been running on must open and read back with every later balwatch.
RELEASED = """
CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO schema_version VALUES ('engine', 2), ('outbox', 1);
CREATE TABLE engine_alert (fingerprint TEXT NOT NULL, rule TEXT NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (fingerprint, rule));
CREATE TABLE engine_account (account TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE engine_sample (account TEXT NOT NULL, venue TEXT NOT NULL,
    asset TEXT NOT NULL, metric TEXT NOT NULL, t REAL NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (account, venue, asset, metric, t)) WITHOUT ROWID;
CREATE TABLE self_alert (fingerprint TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE outbox_alert (id INTEGER PRIMARY KEY, doc TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE outbox_delivery (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert INTEGER NOT NULL REFERENCES outbox_alert (id),
    sink TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL NOT NULL);
CREATE INDEX outbox_delivery_by_sink ON outbox_delivery (sink, status, id);
CREATE INDEX outbox_delivery_by_alert ON outbox_delivery (alert);
CREATE TRIGGER outbox_delivery_prune AFTER DELETE ON outbox_delivery
    WHEN NOT EXISTS (SELECT 1 FROM outbox_delivery WHERE alert = OLD.alert)
    BEGIN DELETE FROM outbox_alert WHERE id = OLD.alert; END;
"""


async def test_a_database_of_the_released_schema_keeps_working(state_dir: Path) -> None:
    state_dir.mkdir()
    state = {
        "fingerprint": "fp1", "rule": "low", "when": "available < 5000", "clear": None,
        "severity": "critical", "account": "treasury", "exchange": "bitso", "venue": "bitso",
        "asset": "USDT", "phase": "firing", "since": 1.0, "last_notified": 2.0,
        "values": {"available": "4210.55"}, "labels": {}, "notify": None,
    }  # fmt: skip
    account = {"account": "treasury", "exchange": "bitso", "first_seen": 1.0,
               "last_ok": 2.0, "failures": 0}  # fmt: skip
    with contextlib.closing(sqlite3.connect(state_dir / DB_FILE)) as conn, conn:
        conn.executescript(RELEASED)
        conn.execute("INSERT INTO engine_alert VALUES ('fp1', 'low', ?)", (json.dumps(state),))
        conn.execute("INSERT INTO engine_account VALUES ('treasury', ?)", (json.dumps(account),))
        conn.execute(
            "INSERT INTO engine_sample VALUES ('treasury', 'bitso', 'USDT', 'total', 5, '10.5')"
        )
        for alert_id, seq in ((7, 1), (8, 2)):
            doc = json.dumps(alert("fp1", seq))
            conn.execute("INSERT INTO outbox_alert VALUES (?, ?, 1.0)", (alert_id, doc))
            conn.execute(
                "INSERT INTO outbox_delivery (id, alert, sink, updated_at) "
                "VALUES (?, ?, 'mqtt', 1.0)",
                (alert_id + 34, alert_id),
            )
        conn.execute("DELETE FROM outbox_delivery WHERE id = 41")  # pruned: the sequence stays

    async with SqliteStateStore(state_dir) as store:
        saved = await store.load(0)
        # Keys added since (the fired text, say) take their defaults; the released ones stay.
        assert [{key: s.to_json()[key] for key in state} for s in saved.alerts] == [state]
        assert [a.to_json() for a in saved.accounts] == [account]
        assert [(key, t, str(v)) for key, t, v in saved.samples] == [
            (("treasury", "bitso", "USDT", "total"), 5.0, "10.5")
        ]
        [pending] = await store.pending("mqtt")
        assert (pending.id, pending.alert, pending.message) == (42, alert("fp1", 2), None)
        await store.bundle("m1", [42])  # the column the upgrade added
        assert [d.message for d in await store.pending("mqtt")] == ["m1"]
        [new] = await enqueue(store, alert("fp1", 3), "mqtt")
        assert new.id == 43


async def test_an_acknowledged_alert_leaves_the_file_with_its_last_delivery(
    state_dir: Path,
) -> None:
    async with SqliteStateStore(state_dir) as store:
        first, second = await enqueue(store, alert("fp1", 1), "mqtt", "slack")
        await store.ack(first.id)
        assert query(store.path, "SELECT count(*) FROM outbox_alert") == [(1,)]
        await store.ack(second.id)
        assert query(store.path, "SELECT count(*) FROM outbox_alert") == [(0,)]


async def test_concurrent_calls_share_transactions(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    write = sqlite_module._write

    def counting_write(conn: sqlite3.Connection, batch: Any) -> int:
        batches.append(len(batch.alerts) + len(batch.acks) + len(batch.fails))
        return write(conn, batch)

    monkeypatch.setattr(sqlite_module, "_write", counting_write)
    async with SqliteStateStore(state_dir) as store:
        enqueued = await asyncio.gather(
            *(enqueue(store, alert(f"fp{i}", 1), "mqtt", "slack") for i in range(200))
        )
        await asyncio.gather(*(store.ack(d.id) for d, _ in enqueued[:100]))

        assert sum(batches) == 300
        assert len(batches) < 300
        ids = [d.id for pair in enqueued for d in pair]
        assert ids == sorted(set(ids))  # distinct, in call order
        pending = await store.pending("mqtt")
        assert [(d.id, d.alert) for d in pending] == [(d.id, d.alert) for d, _ in enqueued[100:]]


async def test_a_failed_transaction_fails_every_write_in_it_and_nothing_sticks(
    state_dir: Path,
) -> None:
    async with SqliteStateStore(state_dir) as store:
        [kept] = await enqueue(store, alert("fp0", 1), "mqtt")
        # A trigger plays the part of a full disk for one document of the transaction.
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON outbox_alert WHEN NEW.doc LIKE "
                f"'%poison%' BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
        results = await asyncio.gather(
            enqueue(store, alert("fp1", 1), "mqtt"),
            store.ack(kept.id),
            enqueue(store, alert("fp2", 1, summary="poison"), "mqtt"),
            return_exceptions=True,
        )

        assert [type(r) for r in results] == [sqlite3.IntegrityError] * 3
        assert [d.id for d in await store.pending("mqtt")] == [kept.id]
        [again] = await enqueue(store, alert("fp1", 1), "mqtt")  # the next one works
        assert again.id > kept.id


@pytest.mark.parametrize("directory", ["st%41", "a#b", "what?"])
async def test_a_state_dir_with_uri_characters_opens_again(tmp_path: Path, directory: str) -> None:
    """The read-only look before opening builds a file: URI; '%', '#' and '?' are escaped."""
    for _ in range(2):  # the second start reads what the first made
        async with SqliteStateStore(tmp_path / directory) as store:
            await store.load(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]


async def test_one_store_per_state_directory_at_a_time(state_dir: Path) -> None:
    """Two daemons would deliver the same outbox twice and overwrite each other's states."""
    async with SqliteStateStore(state_dir):
        with pytest.raises(StateError, match="another balwatch is running"):
            await SqliteStateStore(state_dir).open()
    async with SqliteStateStore(state_dir):  # closing let it go
        pass


@pytest.mark.parametrize("kind", ["foreign", "corrupt"])
async def test_a_database_that_is_not_balwatchs_is_refused_untouched(
    state_dir: Path, kind: str
) -> None:
    state_dir.mkdir()
    db = state_dir / DB_FILE
    if kind == "foreign":
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount TEXT)")
    else:
        db.write_bytes(b"not a database at all" * 100)
    os.chmod(db, 0o644)
    before = db.read_bytes()
    with pytest.raises(StateError, match=f"{db}: (holds tables of another program|not a usable)"):
        await SqliteStateStore(state_dir).open()
    assert db.read_bytes() == before
    assert stat.S_IMODE(db.stat().st_mode) == 0o644
    assert sorted(p.name for p in state_dir.iterdir()) == [DB_FILE, LOCK_FILE]
    async with SqliteStateStore(state_dir / "elsewhere"):  # the lock was let go
        pass


# --- who may read the files ----------------------------------------------------------

_MODES = """
import asyncio, json, os, stat, sys
from pathlib import Path
from balwatch.state.base import AlertCommit, RoutedAlert
from balwatch.state.sqlite import SqliteStateStore

os.umask(int(sys.argv[2], 8))
state_dir = Path(sys.argv[1])

async def main():
    async with SqliteStateStore(state_dir) as store:
        doc = {"fingerprint": "fp", "id": "1"}
        await store.commit(AlertCommit([RoutedAlert(doc, ["mqtt"])]))
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in state_dir.iterdir()}
        modes["."] = oct(stat.S_IMODE(state_dir.stat().st_mode))
        print(json.dumps(modes))

asyncio.run(main())
"""


def modes_while_open(state_dir: Path, umask: int) -> dict[str, str]:
    """The modes of the state directory and its files while a store in a process of its
    own, started with ``umask``, has them open (-wal and -shm exist only then)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MODES), str(state_dir), oct(umask)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_the_state_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The database holds balances: no one else may read it, even under umask 022."""
    modes = modes_while_open(tmp_path / "new" / "state", umask)
    assert modes == {
        ".": "0o700",
        DB_FILE: "0o600",
        f"{DB_FILE}-wal": "0o600",
        f"{DB_FILE}-shm": "0o600",
        LOCK_FILE: "0o600",
    }


def test_files_an_older_balwatch_left_readable_are_made_private(tmp_path: Path) -> None:
    """An existing directory keeps its mode (it may not be balwatch's to decide); the
    files in it that are balwatch's are tightened."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o755)  # noqa: S103 - as an older balwatch left it under umask 022
    modes_while_open(state_dir, 0o022)
    for name in (DB_FILE, LOCK_FILE):
        os.chmod(state_dir / name, 0o644)
    modes = modes_while_open(state_dir, 0o022)
    assert modes["."] == "0o755"
    assert {name: mode for name, mode in modes.items() if name != "."} == {
        DB_FILE: "0o600",
        f"{DB_FILE}-wal": "0o600",
        f"{DB_FILE}-shm": "0o600",
        LOCK_FILE: "0o600",
    }


async def test_one_daemon_per_state_dir_speaks_for_everything_whatever_the_scope(
    state_dir: Path,
) -> None:
    """SQLite has no replicas: a scope (which a PostgreSQL store would fence on) is taken
    and changes nothing."""
    nobody = Scope(tokens={"k": 7}, owners={"elsewhere": "k"})
    async with SqliteStateStore(state_dir) as store:
        [delivery] = await store.commit(
            AlertCommit([RoutedAlert(alert("fp1", 1), ["mqtt"])], scope=nobody)
        )
        await store.flush(StateSnapshot([], [], HistoryChanges([], [], []), scope=nobody))
        assert (await store.load(0, nobody)).alerts == []
        assert await store.claimed([delivery.id, 99]) == [delivery.id, 99]
        assert [d.id for d in await store.pending("mqtt")] == [delivery.id]
