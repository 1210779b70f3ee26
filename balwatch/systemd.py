"""sd_notify without libsystemd: tell systemd when balwatch is ready, reloading or stopping.

The protocol is one ``KEY=VALUE`` line per field in a datagram to the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``).
It is small enough to speak directly, which keeps a C library and its Python binding out
of the dependencies.

Notifications are advice to the service manager, never part of balwatch's own work: a
send that fails (no listener, full queue, unsupported address) is logged at debug level and
otherwise ignored, and a send never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Notifier:
    """Sends notifications to systemd; every method is a no-op when ``address`` is None.

    ``address`` is in the form ``socket.sendto`` takes (an abstract name starts with a NUL
    byte). ``watchdog_usec`` is the watchdog timeout systemd granted this process, if any.
    """

    address: str | None = None
    watchdog_usec: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        return cls(_address(environ.get("NOTIFY_SOCKET", "")), _watchdog_usec(environ))

    def ready(self, status: str | None = None) -> None:
        """Startup or a reload finished; ``status`` is shown by ``systemctl status``."""
        self._send({"READY": "1"} | ({} if status is None else {"STATUS": status}))

    def reloading(self) -> None:
        """A reload began; ``ready()`` must follow when it ends, whether it applied or not.

        ``MONOTONIC_USEC`` lets systemd (Type=notify-reload, >= 253) tell this reload apart
        from one that began before its own reload request; older versions ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send({"RELOADING": "1", "MONOTONIC_USEC": str(now_usec)})

    def stopping(self) -> None:
        """Shutdown began: systemd shows "deactivating" while outbound alerts are flushed."""
        self._send({"STOPPING": "1"})

    def status(self, text: str) -> None:
        """One line for ``systemctl status`` (accounts ok/failing, alerts firing)."""
        self._send({"STATUS": text})

    def watchdog(self) -> None:
        """Proof of life; systemd restarts the service when these stop for WatchdogSec."""
        self._send({"WATCHDOG": "1"})

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half the timeout, as sd_watchdog_enabled advises.

        None when systemd set no watchdog for this process or there is nowhere to send.
        """
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def _send(self, fields: Mapping[str, str]) -> None:
        if self.address is None:
            return
        # A newline inside a value would start a field of the sender's choosing.
        message = "".join(f"{k}={' '.join(v.splitlines())}\n" for k, v in fields.items())
        try:
            # A socket per message, as sd_notify does: nothing to close, nothing shared.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self.address)
        except OSError as e:
            log.debug("sd_notify_failed", fields=sorted(fields), error=str(e))


def _address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value:
        # systemd >= 254 can also name a vsock; balwatch runs on the host it is started on.
        log.debug("sd_notify_unsupported_socket", notify_socket=value)
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID unset or ours)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        pid = int(environ.get("WATCHDOG_PID", os.getpid()))
    except ValueError:
        return None
    # A child that inherited the environment must not ping on its parent's behalf.
    return usec if usec > 0 and pid == os.getpid() else None


async def run_watchdog(
    notifier: Notifier,
    progress: Callable[[], float],
    stop: asyncio.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ping the watchdog until ``stop`` is set, but only while the daemon makes progress.

    ``progress()`` returns the ``clock()`` time at which the daemon's work last advanced
    (a scheduler tick, a handled poll result). A task that pinged unconditionally would
    keep a daemon alive whose pollers are stuck; instead, once progress is older than the
    watchdog timeout the pings stop and systemd restarts the service. It must therefore
    advance more often than WatchdogSec even when every account is idle. A blocked event
    loop stops the pings too, since this task cannot run either.

    Returns at once when systemd asked for no watchdog.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    timeout = 2 * interval
    stalled = False
    while not stop.is_set():
        idle = clock() - progress()
        if idle <= timeout:
            if stalled:
                log.info("watchdog_resumed")
            stalled = False
            notifier.watchdog()
        elif not stalled:
            stalled = True
            log.warning("watchdog_stalled", idle_seconds=round(idle, 1), timeout_seconds=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
