"""The real daemon, watched: every handled poll result and every log event reach the test.

:class:`WatchedDaemon` is :class:`~balwatch.daemon.Daemon` unchanged, except that each poll
result is reported to a callback *after* the daemon handled it (engine, metrics, outbox), so
a test sees exactly the state the next poll starts from. :class:`LogWatch` is a structlog
processor that records events and lets a test wait for one, instead of sleeping.
:class:`TinyFs` fills a small real filesystem (the ``tiny_fs`` fixture mounts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
import yaml

from balwatch.daemon import Daemon
from balwatch.poll import PollResult
from balwatch.publisher import OnAlerts
from balwatch.systemd import Notifier
from tests.waiting import within

OnPoll = Callable[[PollResult], None]


class WatchedDaemon(Daemon):
    """The daemon with a hook after each poll result has been handled."""

    def __init__(self, config_path: Path, *, on_poll: OnPoll, on_alerts: OnAlerts) -> None:
        super().__init__(
            config_path, on_alerts=on_alerts, notifier=Notifier(None), configure_logs=False
        )
        self._on_poll = on_poll

    async def _handle_result(self, result: PollResult) -> None:
        await super()._handle_result(result)
        self._on_poll(result)


class LogWatch:
    """Records every structlog event (after ``format_exc_info``); wait for one by name."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._thread = threading.get_ident()

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._thread = threading.get_ident()

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self.entries.append({**event_dict, "level": method})
        if self._changed is not None and self._loop is not None:
            if threading.get_ident() == self._thread:
                self._changed.set()
            else:
                self._loop.call_soon_threadsafe(self._changed.set)
        raise structlog.DropEvent

    def events(self, name: str, **fields: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.entries
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait(
        self, name: str, *, timeout: float = 10.0, after: int = 0, **fields: object
    ) -> dict[str, Any]:
        """The first ``name`` event among entries from index ``after`` on; waits for it."""
        assert self._changed is not None, "call bind_loop() first"
        changed = self._changed

        async def logged() -> dict[str, Any]:
            while True:
                for entry in self.entries[after:]:
                    if entry.get("event") == name and all(
                        entry.get(k) == v for k, v in fields.items()
                    ):
                        return entry
                changed.clear()
                await changed.wait()

        return await within(logged(), f"log event {name} {fields or ''}".rstrip(), timeout)


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    """Route every structlog event into a :class:`LogWatch` while the block runs."""
    watch = LogWatch()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, watch],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield watch
    finally:
        structlog.configure(**old)


def write_config(
    directory: Path,
    *,
    accounts: list[dict[str, Any]],
    rules: list[dict[str, Any]],
    sinks: list[dict[str, Any]],
    state_dir: Path,
    poll_interval: str,
    timeout: str = "5s",
) -> Path:
    """Write ``balwatch.yaml`` and its one rule file; returns the config path."""
    rule_file = directory / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"defaults": {"for": "0s"}, "rules": rules}))
    config: Mapping[str, Any] = {
        "state_dir": str(state_dir),
        "rules": [str(rule_file)],
        "defaults": {"poll_interval": poll_interval, "timeout": timeout},
        "accounts": accounts,
        "sinks": sinks,
    }
    path = directory / "balwatch.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


class TinyFs:
    """A tmpfs of a few MiB; :meth:`fill` takes every free block, :meth:`free` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        """Write until the kernel says ENOSPC, in ever smaller pieces down to one byte."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)
