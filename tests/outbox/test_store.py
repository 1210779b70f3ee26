"""The outbox tables on a real SQLite file: commit, prune, dead letters, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from balwatch.outbox import store as store_module
from balwatch.outbox.store import OUTBOX_SCHEMA, OutboxStore, SinkCounts, migrate, open_db
from tests.outbox.doubles import alert


def query(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read with a connection of our own, as another process would see the file."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_enqueue_commits_the_alert_once_and_a_delivery_per_sink(
    store: OutboxStore, db_path: Path
) -> None:
    deliveries = await store.enqueue(alert("fp1", 1), ["mqtt", "slack", "mqtt"])

    assert [(d.sink, d.fingerprint, d.alert["id"]) for d in deliveries] == [
        ("mqtt", "fp1", "fp1:1"),
        ("slack", "fp1", "fp1:1"),
    ]
    assert query(db_path, "SELECT count(*) FROM outbox_alert") == [(1,)]
    assert query(db_path, "SELECT id, sink, status, attempts FROM outbox_delivery") == [
        (deliveries[0].id, "mqtt", "pending", 0),
        (deliveries[1].id, "slack", "pending", 0),
    ]


async def test_an_alert_for_no_sink_is_not_stored(store: OutboxStore, db_path: Path) -> None:
    assert await store.enqueue(alert("fp1", 1), []) == []
    assert query(db_path, "SELECT count(*) FROM outbox_alert") == [(0,)]


async def test_a_document_without_fingerprint_is_refused_before_anything_is_written(
    store: OutboxStore, db_path: Path
) -> None:
    good = alert("fp1", 1)
    bad = {k: v for k, v in alert("fp2", 1).items() if k != "fingerprint"}
    with pytest.raises(ValueError, match="fingerprint"):
        await store.enqueue_many([(good, ["mqtt"]), (bad, ["mqtt"])])
    assert query(db_path, "SELECT count(*) FROM outbox_delivery") == [(0,)]


async def test_ack_prunes_the_delivery_and_the_alert_after_its_last_delivery(
    store: OutboxStore, db_path: Path
) -> None:
    first, second = await store.enqueue(alert("fp1", 1), ["mqtt", "slack"])

    await store.ack(first.id)
    assert query(db_path, "SELECT sink FROM outbox_delivery") == [("slack",)]
    assert query(db_path, "SELECT count(*) FROM outbox_alert") == [(1,)]

    await store.ack(second.id)
    assert query(db_path, "SELECT count(*) FROM outbox_delivery") == [(0,)]
    assert query(db_path, "SELECT count(*) FROM outbox_alert") == [(0,)]


async def test_dead_letters_are_kept_with_error_and_attempts_and_hold_their_alert(
    store: OutboxStore,
) -> None:
    mqtt, slack = await store.enqueue(alert("fp1", 1), ["mqtt", "slack"])
    await store.fail(slack.id, "HTTP 500", dead=False)
    await store.fail(slack.id, "HTTP 400: bad payload", dead=True)
    await store.ack(mqtt.id)

    [dead] = await store.dead_letters()
    assert (dead.id, dead.sink, dead.attempts, dead.error) == (
        slack.id,
        "slack",
        2,
        "HTTP 400: bad payload",
    )
    assert dead.alert == alert("fp1", 1)
    assert await store.dead_letters("mqtt") == []
    assert await store.pending("slack") == []
    assert await store.counts() == {"slack": SinkCounts(pending=0, dead=1)}


async def test_pending_survives_reopening_in_enqueue_order_with_attempts(
    db_path: Path,
) -> None:
    store = await OutboxStore.open(db_path)
    for seq in range(3):
        await store.enqueue(alert("fp1", seq), ["mqtt"])
        await store.enqueue(alert("fp2", seq), ["mqtt", "slack"])
    [first, *_] = await store.pending("mqtt")
    await store.fail(first.id, "timeout", dead=False)
    await store.close()

    reopened = await OutboxStore.open(db_path)
    try:
        pending = await reopened.pending("mqtt")
        assert [d.alert["id"] for d in pending] == [
            "fp1:0", "fp2:0", "fp1:1", "fp2:1", "fp1:2", "fp2:2"
        ]  # fmt: skip
        assert [d.attempts for d in pending] == [1, 0, 0, 0, 0, 0]
        assert [d.id for d in pending] == sorted(d.id for d in pending)
        assert await reopened.counts() == {
            "mqtt": SinkCounts(pending=6),
            "slack": SinkCounts(pending=3),
        }
    finally:
        await reopened.close()


async def test_delivery_ids_are_never_reused_after_pruning(store: OutboxStore) -> None:
    [first] = await store.enqueue(alert("fp1", 1), ["mqtt"])
    await store.ack(first.id)
    [second] = await store.enqueue(alert("fp1", 2), ["mqtt"])
    assert second.id > first.id


async def test_concurrent_calls_share_transactions(
    store: OutboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    write = store_module._write

    def counting_write(conn: sqlite3.Connection, batch: Any) -> int:
        batches.append(len(batch.alerts) + len(batch.acks) + len(batch.fails))
        return write(conn, batch)

    monkeypatch.setattr(store_module, "_write", counting_write)
    enqueued = await asyncio.gather(
        *(store.enqueue(alert(f"fp{i}", 1), ["mqtt", "slack"]) for i in range(200))
    )
    await asyncio.gather(*(store.ack(d.id) for d, _ in enqueued[:100]))

    assert sum(batches) == 300
    assert len(batches) < 300
    ids = [d.id for pair in enqueued for d in pair]
    assert ids == sorted(set(ids))  # distinct, in call order
    pending = await store.pending("mqtt")
    assert [(d.id, d.alert) for d in pending] == [(d.id, d.alert) for d, _ in enqueued[100:]]
    assert len(await store.pending("slack")) == 200


async def test_a_failed_transaction_fails_every_write_in_it_and_nothing_sticks(
    store: OutboxStore, db_path: Path
) -> None:
    [kept] = await store.enqueue(alert("fp0", 1), ["mqtt"])
    # A trigger on the store's own connection plays the part of a full disk.
    await store._read(
        "CREATE TEMP TRIGGER poison BEFORE INSERT ON outbox_alert "
        "WHEN NEW.doc LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    results = await asyncio.gather(
        store.enqueue(alert("fp1", 1), ["mqtt"]),
        store.ack(kept.id),
        store.enqueue(alert("fp2", 1, summary="poison"), ["mqtt"]),
        return_exceptions=True,
    )

    assert [type(r) for r in results] == [sqlite3.IntegrityError] * 3
    assert [d.id for d in await store.pending("mqtt")] == [kept.id]
    [again] = await store.enqueue(alert("fp1", 1), ["mqtt"])  # the next transaction works
    assert again.id > kept.id
    assert query(db_path, "SELECT count(*) FROM outbox_alert") == [(2,)]


async def test_closed_store_refuses_work(db_path: Path) -> None:
    store = await OutboxStore.open(db_path)
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.enqueue(alert("fp1", 1), ["mqtt"])


def test_open_db_uses_wal_with_full_sync(db_path: Path) -> None:
    conn = open_db(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    finally:
        conn.close()


def test_migrate_applies_new_steps_once_per_component(db_path: Path) -> None:
    conn = open_db(db_path)
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


def test_migrate_refuses_a_database_from_a_newer_balwatch(db_path: Path) -> None:
    conn = open_db(db_path)
    try:
        migrate(conn, "outbox", OUTBOX_SCHEMA)
        with pytest.raises(sqlite3.DatabaseError, match="newer than this balwatch"):
            migrate(conn, "outbox", OUTBOX_SCHEMA[:-1])
    finally:
        conn.close()


def test_a_failed_migration_step_leaves_the_version_unchanged(db_path: Path) -> None:
    conn = open_db(db_path)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, "alerts", [["CREATE TABLE t (x)", "NOT SQL"]])
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone() == (
            0,
        )
        migrate(conn, "alerts", [["CREATE TABLE t (x)"]])
    finally:
        conn.close()


async def test_state_writes_commit_with_the_alerts_they_produced(db_path: Path) -> None:
    store = await OutboxStore.open(db_path)

    def create(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS engine_probe (v INTEGER)")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO engine_probe VALUES (1)")
        raise sqlite3.OperationalError("disk I/O error")

    await store.write(create)
    with pytest.raises(sqlite3.OperationalError):
        await store.enqueue_many([(alert("fp-1", 1), ["s"])], also=broken)
    # the failed state write took the alert down with it: all or nothing
    assert await store.pending("s") == []

    def good(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO engine_probe VALUES (2)")

    await store.enqueue_many([(alert("fp-1", 1), ["s"])], also=good)
    await store.close()
    assert query(db_path, "SELECT v FROM engine_probe") == [(2,)]
    assert query(db_path, "SELECT count(*) FROM outbox_delivery") == [(1,)]
