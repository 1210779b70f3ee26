"""Persistence: the :class:`~balwatch.state.base.StateStore` interface and its backends."""

from __future__ import annotations

from balwatch.config import Config
from balwatch.config.model import StateSettings
from balwatch.state.base import StateStore
from balwatch.state.sqlite import SqliteStateStore


def state_store(config: Config | StateSettings, *, exclusive: bool = True) -> StateStore:
    """The store for ``config``: SQLite in ``state_dir`` (the one backend so far).

    Not ``exclusive``: for the CLI's silence and outbox commands, beside a running daemon.
    """
    return SqliteStateStore(config.state_dir, exclusive=exclusive)
