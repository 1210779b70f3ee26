"""The state store backends, as the conformance suite drives them.

A :class:`Backend` makes stores on one storage of its kind, and can make that storage
itself misbehave the way a real one does (a write refused by the database, a schema left by
a newer balwatch), so every test goes through the :class:`StateStore` interface and the
implementation's own error paths. A new backend adds a class here and its name to
``BACKENDS``; ``tests/state/test_conformance.py`` then runs every test against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import psycopg
import pytest

from balwatch.secret import Secret
from balwatch.state.base import StateStore
from balwatch.state.postgres import PostgresStateStore
from balwatch.state.sqlite import DB_FILE, SqliteStateStore

Writes = Literal["alerts", "states", "deliveries"]
"""What :meth:`Backend.refuse` can refuse: new outbox alerts; engine states, accounts,
history and self-alerts; changes to delivery rows (acks, failed attempts)."""


class Backend(Protocol):
    def store(self) -> StateStore:
        """A store on this backend's storage, not open yet; each call makes a new one on the
        same storage, as a restart of the daemon would."""
        ...

    def beside(self) -> StateStore:
        """A store on the same storage as the CLI opens one, beside a running daemon's
        (for SQLite: without the daemon's lock, on a database that exists)."""
        ...

    async def refuse(self, *writes: Writes) -> None:
        """From now on the storage refuses these writes with an error of its own."""
        ...

    async def allow(self) -> None:
        """Take back every refusal."""
        ...

    async def make_schema_newer(self) -> None:
        """Mark the stored schema as a newer balwatch's (open a store on it once first)."""
        ...


# Triggers raise inside the store's own transaction: SQLite itself refuses the write.
_REFUSED: dict[Writes, list[tuple[str, str]]] = {
    "alerts": [("outbox_alert", "INSERT")],
    "states": [
        (table, op)
        for table in ("engine_alert", "engine_account", "engine_sample", "self_alert")
        for op in ("INSERT", "DELETE")
    ],
    "deliveries": [("outbox_delivery", "UPDATE"), ("outbox_delivery", "DELETE")],
}
REFUSAL = "refused by the test"


class SqliteBackend:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.db = state_dir / DB_FILE

    def store(self) -> SqliteStateStore:
        return SqliteStateStore(self.state_dir)

    def beside(self) -> SqliteStateStore:
        return SqliteStateStore(self.state_dir, exclusive=False)

    async def refuse(self, *writes: Writes) -> None:
        statements = [
            f"CREATE TRIGGER IF NOT EXISTS refuse_{table}_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            for kind in writes
            for table, op in _REFUSED[kind]
        ]
        await self._execute(statements)

    async def allow(self) -> None:
        statements = [
            f"DROP TRIGGER IF EXISTS refuse_{table}_{op.lower()}"
            for refused in _REFUSED.values()
            for table, op in refused
        ]
        await self._execute(statements)

    async def make_schema_newer(self) -> None:
        await self._execute(["UPDATE schema_version SET version = 99 WHERE component = 'outbox'"])

    async def _execute(self, statements: list[str]) -> None:
        """On a connection of our own, as another process would: the store's connection
        sees the schema change at its next statement."""

        def run() -> None:
            with contextlib.closing(sqlite3.connect(self.db, timeout=10.0)) as conn, conn:
                for statement in statements:
                    conn.execute(statement)

        await asyncio.to_thread(run)


_PG_REFUSED: dict[Writes, list[tuple[str, str]]] = {
    "alerts": [("balwatch_outbox_alert", "INSERT")],
    "states": [
        (table, op)
        for table in (
            "balwatch_alert_state",
            "balwatch_account_state",
            "balwatch_sample",
            "balwatch_self_alert",
        )
        for op in ("INSERT", "DELETE")
    ],
    "deliveries": [("balwatch_delivery", "UPDATE"), ("balwatch_delivery", "DELETE")],
}


_NOT_A_CLAIM = (
    "WHEN ((OLD.status, OLD.attempts, OLD.last_error, OLD.message) IS DISTINCT FROM "
    "(NEW.status, NEW.attempts, NEW.last_error, NEW.message)) "
)


class PostgresBackend:
    """A database of its own on the session's PostgreSQL server (tests/postgres.py)."""

    def __init__(self, dsn: str, instance: str = "replica-a") -> None:
        self.dsn = dsn
        self.instance = instance

    def store(self) -> PostgresStateStore:
        return PostgresStateStore(Secret(self.dsn), instance=self.instance)

    def beside(self) -> PostgresStateStore:
        return PostgresStateStore(Secret(self.dsn), instance=self.instance, create=False)

    async def refuse(self, *writes: Writes) -> None:
        statements = [
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        ]
        # Per row, as SQLite's: a delivery's claim (who sends it) may still change.
        statements += [
            f"CREATE OR REPLACE TRIGGER refuse_{op.lower()} BEFORE {op} ON {table} FOR EACH ROW "
            + (_NOT_A_CLAIM if (table, op) == ("balwatch_delivery", "UPDATE") else "")
            + "EXECUTE FUNCTION refuse()"
            for kind in writes
            for table, op in _PG_REFUSED[kind]
        ]
        await self.execute(statements)

    async def allow(self) -> None:
        await self.execute(
            [
                f"DROP TRIGGER IF EXISTS refuse_{op.lower()} ON {table}"
                for refused in _PG_REFUSED.values()
                for table, op in refused
            ]
        )

    async def make_schema_newer(self) -> None:
        await self.execute(["UPDATE balwatch_schema SET version = 99 WHERE component = 'outbox'"])

    async def execute(self, statements: list[str]) -> None:
        """On a connection of our own, as another process would."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            for statement in statements:
                await conn.execute(statement.encode())


# Name -> a backend on storage of its own: under the test's temporary directory, or a new
# database on the session's PostgreSQL server.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": lambda request, tmp: SqliteBackend(tmp / "state"),
    "postgres": lambda request, tmp: PostgresBackend(request.getfixturevalue("postgres_dsn")),
}
