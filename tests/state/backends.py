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

from balwatch.state.base import StateStore
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


# Name -> a backend on storage of its own under a test's temporary directory.
BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": lambda tmp: SqliteBackend(tmp / "state")
}
