"""Persistence: the :class:`~balwatch.state.base.StateStore` interface and its backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balwatch.config import Config
from balwatch.config.model import StateSettings
from balwatch.state.base import StateError, StateStore
from balwatch.state.sqlite import SqliteStateStore

if TYPE_CHECKING:
    from balwatch.state.postgres import PostgresStateStore

POSTGRES_EXTRA_HINT = (
    "the PostgreSQL state store needs its driver: pip install 'balwatch[postgres]'"
)


def state_store(config: Config | StateSettings, *, exclusive: bool = True) -> StateStore:
    """The store for ``config``: SQLite in ``state_dir``, or PostgreSQL (``state.dsn``).

    Not ``exclusive``: for the CLI's silence and outbox commands, beside a running daemon:
    the storage must exist already (PostgreSQL is shared by replicas anyway). StateError
    when the PostgreSQL driver is not installed.
    """
    if config.state.backend == "postgres":
        return postgres_store(config, create=exclusive)
    return SqliteStateStore(config.state_dir, exclusive=exclusive)


def postgres_extra_missing() -> StateError | None:
    """The error to raise when the PostgreSQL driver (an optional extra) is not installed."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return StateError(POSTGRES_EXTRA_HINT)
    return None


def postgres_store(config: Config | StateSettings, *, create: bool = True) -> PostgresStateStore:
    """The PostgreSQL store of ``config`` (``state.backend: postgres``), for this instance;
    not ``create``: the tables must exist (the CLI beside a daemon)."""
    missing = postgres_extra_missing()
    if missing is not None:
        raise missing
    # Imported here: psycopg is an optional extra, and SQLite users need not have it.
    from balwatch.state.postgres import PostgresStateStore

    assert config.state.dsn is not None, "validated in StateConfig"
    return PostgresStateStore(
        config.state.dsn,
        instance=config.instance,
        lease_ttl=config.state.lease_ttl,
        create=create,
    )
