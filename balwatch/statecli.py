"""``balwatch state migrate``: move a daemon's SQLite state into PostgreSQL, for replicas.

Stop the daemon first: the SQLite state directory is taken (locked) while copying, so a
running daemon makes this fail rather than be copied half-way. The target DSN is
``postgres:env:NAME`` (read from the environment variable NAME: a password on the command
line is visible to every user of the host in the process list) or ``postgres:DSN``. The
DSN and its password never appear in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from balwatch import redact
from balwatch.config.model import dsn_passwords, host_name
from balwatch.secret import Secret
from balwatch.state import postgres_extra_missing
from balwatch.state.base import StateError
from balwatch.state.sqlite import DB_FILE, SqliteStateStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _BadInput(Exception):
    """A one-line reason to exit 2."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``state`` subcommands, for the CLI's parser."""
    state = sub.add_parser("state", help="move the state store (migrate)")
    verbs = state.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "migrate", help="copy a SQLite state into an empty PostgreSQL database (daemon stopped)"
    )
    p.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:PATH",
        help="the state_dir (or its balwatch.db) to copy from",
    )  # fmt: skip
    p.add_argument(
        "--to", dest="target", required=True, metavar="postgres:DSN",
        help="postgres:env:NAME (the DSN in $NAME), or postgres:DSN",
    )  # fmt: skip
    p.add_argument(
        "--instance", default=host_name(),
        help="the replica the self-alerts are copied for (default: the host name, as `instance`)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="copy into a database holding state")
    p.set_defaults(func=cmd_state_migrate)


def cmd_state_migrate(args: argparse.Namespace) -> int:
    try:
        state_dir = _sqlite_dir(args.source)
        dsn = _postgres_dsn(args.target)
    except _BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redact.install((dsn, *dsn_passwords(dsn.reveal())))
    try:
        copied, where = asyncio.run(_migrate(state_dir, dsn, args.instance, force=args.force))
    except StateError as exc:
        print(f"error: {redact.installed().text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    print(f"copied {copied} from {state_dir / DB_FILE} to {where}")
    return EXIT_OK


async def _migrate(state_dir: Path, dsn: Secret, instance: str, *, force: bool) -> tuple[str, str]:
    missing = postgres_extra_missing()
    if missing is not None:
        raise missing
    from balwatch.state.copy import copy_state
    from balwatch.state.postgres import PostgresStateStore

    # exclusive: takes the state directory's lock, so a running daemon is refused.
    async with (
        SqliteStateStore(state_dir) as source,
        PostgresStateStore(dsn, instance=instance) as target,
    ):
        copied = await copy_state(source, target, force=force)
        return copied.summary(), target.location


def _sqlite_dir(text: str) -> Path:
    kind, _, path = text.partition(":")
    if kind != "sqlite" or not path:
        raise _BadInput(f"--from: expected sqlite:PATH (a state_dir), got {text!r}")
    where = Path(path)
    if where.name == DB_FILE:
        where = where.parent
    if not (where / DB_FILE).is_file():
        raise _BadInput(f"--from: no {DB_FILE} in {where}")
    return where


def _postgres_dsn(text: str) -> Secret:
    """The DSN of ``--to``; never echoed: it may hold a password."""
    kind, _, rest = text.partition(":")
    if kind not in ("postgres", "postgresql") or not rest:
        raise _BadInput("--to: expected postgres:env:NAME or postgres:DSN")
    if rest.startswith("env:"):
        name = rest.removeprefix("env:")
        value = os.environ.get(name)
        if not value:
            raise _BadInput(f"--to: the environment variable {name} is not set")
        return Secret(value)
    return Secret(rest)
