"""``balwatch silence`` and ``balwatch outbox``: what a person on call changes by hand.

Both work on the state store of the config given with ``-c``, beside a running daemon
(which takes in each change within a second) or without one (it sees them when it
starts). Of the config they read only where the state lives, so the credentials it names
need not be at hand. Bad input is one line on stderr and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from balwatch.alert import iso_z
from balwatch.config.load import load_state_settings
from balwatch.config.model import StateSettings
from balwatch.durations import parse_duration
from balwatch.errors import ConfigError
from balwatch.silence import Silence, SilenceError, new_silence, parse_time
from balwatch.state import state_store
from balwatch.state.base import OutboxEntry, StateError, StateStore
from balwatch.table import render_table

EXIT_OK, EXIT_CONFIG, EXIT_USAGE = 0, 1, 2
_T = TypeVar("_T")


class _BadInput(Exception):
    """A one-line reason to exit 2."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``silence`` and ``outbox`` subcommands, for the CLI's parser."""

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="balwatch.yaml (its state_dir)")
        return p

    silence = sub.add_parser("silence", help="mute matching alerts for a while (add|list|expire)")
    verbs = silence.add_subparsers(dest="verb", required=True)
    p = with_config(verbs.add_parser("add", help="add a silence"))
    p.add_argument(
        "--match", action="append", required=True, metavar="MATCHER",
        help="NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX; every one must match",
    )  # fmt: skip
    until = p.add_mutually_exclusive_group(required=True)
    until.add_argument("--for", dest="duration", help="how long, like 2h or 1d")
    until.add_argument("--until", help="when it ends: an ISO-8601 time (local without a zone)")
    p.add_argument("--starts", help="when it starts (ISO-8601); default: now")
    p.add_argument("--comment", required=True, help="why: stays with the silence")
    p.add_argument("--author", help="who: default the login name")
    p.set_defaults(func=cmd_silence_add)
    p = with_config(verbs.add_parser("list", help="silences in force or to come"))
    p.add_argument("--all", action="store_true", help="expired ones too (kept five days)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_silence_list)
    p = with_config(verbs.add_parser("expire", help="end a silence now"))
    p.add_argument("id", help="the silence's id (silence list shows it)")
    p.set_defaults(func=cmd_silence_expire)

    outbox = sub.add_parser("outbox", help="pending deliveries and dead letters (list|retry|drop)")
    verbs = outbox.add_subparsers(dest="verb", required=True)
    p = with_config(verbs.add_parser("list", help="pending deliveries and dead letters"))
    p.add_argument("--dead", action="store_true", help="dead letters only")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_outbox_list)
    p = with_config(verbs.add_parser("retry", help="send dead letters again"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    which.add_argument("--all", action="store_true", help="every dead letter")
    p.set_defaults(func=cmd_outbox_retry)
    p = with_config(verbs.add_parser("drop", help="delete dead letters"))
    p.add_argument("ids", nargs="+", type=int, metavar="ID")
    p.set_defaults(func=cmd_outbox_drop)


# --- silence ---------------------------------------------------------------------------


def cmd_silence_add(args: argparse.Namespace) -> int:
    now = time.time()

    def made() -> Silence:
        starts = now if args.starts is None else _time(args.starts, "--starts")
        if args.duration is not None:
            try:
                ends = starts + parse_duration(args.duration)
            except ValueError as exc:
                raise _BadInput(f"--for: {exc}") from None
        else:
            ends = _time(args.until, "--until")
        try:
            return new_silence(
                args.match, starts_at=starts, ends_at=ends, author=args.author or _login(),
                comment=args.comment, now=now,
            )  # fmt: skip
        except SilenceError as exc:
            raise _BadInput(exc.message) from None

    async def add(store: StateStore) -> str:
        silence = made()
        await store.add_silence(silence)
        return (
            f"silence {silence.id} added: {', '.join(str(m) for m in silence.matchers)} "
            f"from {_when(silence.starts_at)} to {_when(silence.ends_at)}"
        )

    return _run(args, add, prepare=made)


def cmd_silence_list(args: argparse.Namespace) -> int:
    async def listed(store: StateStore) -> str:
        now = time.time()
        silences = [s for s in await store.silences() if args.all or s.state(now) != "expired"]
        if args.json:
            return json.dumps([s.to_json(now) for s in silences], indent=2, ensure_ascii=False)
        rows = [
            [s.id, s.state(now), _when(s.starts_at), _when(s.ends_at),
             " ".join(map(str, s.matchers)), s.author, s.comment]
            for s in silences
        ]  # fmt: skip
        headers = ["id", "state", "starts", "ends", "matchers", "author", "comment"]
        return render_table(headers, rows) if rows else "no silences"

    return _run(args, listed)


def cmd_silence_expire(args: argparse.Namespace) -> int:
    async def expire(store: StateStore) -> str:
        ended = await store.expire_silence(args.id, time.time())
        if ended is None:
            raise _BadInput(f"no silence {args.id!r} (silence list --all shows them)")
        return f"silence {ended.id} ended at {_when(ended.ends_at)}"

    return _run(args, expire)


# --- outbox ----------------------------------------------------------------------------


def cmd_outbox_list(args: argparse.Namespace) -> int:
    async def listed(store: StateStore) -> str:
        entries = await store.outbox(dead_only=args.dead)
        if args.json:
            return json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False)
        rows = [
            [str(e.id), e.sink, e.status, str(e.attempts), _when(e.updated_at),
             str(e.alert.get("event")), _what(e), e.error or ""]
            for e in entries
        ]  # fmt: skip
        headers = ["id", "sink", "status", "attempts", "since", "event", "alert", "error"]
        return render_table(headers, rows) if rows else "the outbox is empty"

    return _run(args, listed)


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    async def retry(store: StateStore) -> str:
        outcome = await store.retry_dead(None if args.all else args.ids)
        lines = [f"{len(outcome.retried)} dead letters pending again"]
        if outcome.stale:
            lines.append(
                "not retried, no longer true (the alert resolved or fired again since): "
                + ", ".join(map(str, outcome.stale))
                + "; drop them"
            )
        if outcome.unknown:
            lines.append("no dead letter has id " + ", ".join(map(str, outcome.unknown)))
        return "\n".join(lines)

    return _run(args, retry)


def cmd_outbox_drop(args: argparse.Namespace) -> int:
    async def drop(store: StateStore) -> str:
        dropped = await store.drop_dead(args.ids)
        missed = [i for i in args.ids if i not in dropped]
        line = f"{len(dropped)} dead letters dropped"
        if missed:
            line += "; not dead letters (pending ones are being delivered): " + ", ".join(
                map(str, missed)
            )
        return line

    return _run(args, drop)


# --- shared ----------------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    work: Callable[[StateStore], Awaitable[str]],
    *,
    prepare: Callable[[], object] | None = None,
) -> int:
    """``work`` on the config's store; its line to stdout, or one line of error to stderr."""
    try:
        if prepare is not None:
            prepare()  # bad input fails before the store is touched
        settings = load_state_settings(args.config)
        print(asyncio.run(_with_store(settings, work)))
    except _BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


async def _with_store(settings: StateSettings, work: Callable[[StateStore], Awaitable[_T]]) -> _T:
    async with state_store(settings, exclusive=False) as store:
        return await work(store)


def _time(text: str, option: str) -> float:
    try:
        return parse_time(text, zone_required=False)
    except ValueError as exc:
        raise _BadInput(f"{option}: {exc}") from None


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): say so instead
        return "unknown user"


def _when(moment: float) -> str:
    return iso_z(datetime.fromtimestamp(round(moment), UTC))


def _what(entry: OutboxEntry) -> str:
    alert = entry.alert
    where = "/".join(str(alert.get(k)) for k in ("account", "venue", "asset") if alert.get(k))
    return f"{alert.get('rule')} {where}"
