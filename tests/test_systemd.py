"""sd_notify through a real datagram socket in NOTIFY_SOCKET, as systemd would receive it.

The unit file itself is checked by ``.ci/systemd-check`` (systemd-analyze verify and
security), which CI runs directly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from balwatch.systemd import Notifier, run_watchdog

RECV_TIMEOUT = 5.0


@pytest.fixture
def notify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # AF_UNIX paths are limited to 108 bytes: a per-test tmp_path can be longer.
    return tmp_path_factory.mktemp("sd")


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, notify_dir: Path
) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(notify_dir / "notify")
        sock.bind(name)
    else:
        name = f"@balwatch-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name[1:])
    sock.settimeout(RECV_TIMEOUT)
    with sock:
        yield sock, name


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event, debug included, whatever level an earlier test configured."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


def receive(sock: socket.socket) -> dict[str, str]:
    lines = sock.recv(4096).decode().splitlines()
    return dict(line.split("=", 1) for line in lines)


def assert_nothing_queued(sock: socket.socket) -> None:
    """Sends are synchronous: anything the notifier sent is already in the queue."""
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(RECV_TIMEOUT)


def test_ready_stopping_status_watchdog(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": name})

    notifier.ready()
    assert receive(sock) == {"READY": "1"}
    notifier.ready("3 accounts ok, 0 failing; 1 alert firing")
    assert receive(sock) == {"READY": "1", "STATUS": "3 accounts ok, 0 failing; 1 alert firing"}
    notifier.status("polling")
    assert receive(sock) == {"STATUS": "polling"}
    notifier.watchdog()
    assert receive(sock) == {"WATCHDOG": "1"}
    notifier.stopping()
    assert receive(sock) == {"STOPPING": "1"}
    assert_nothing_queued(sock)


def test_reloading_sends_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": name}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    message = receive(sock)
    assert message.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_a_newline_in_status_cannot_add_a_field(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    Notifier.from_env({"NOTIFY_SOCKET": name}).status("bad account\nREADY=1")
    assert receive(sock) == {"STATUS": "bad account READY=1"}


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert notifier.address is None
    notifier.ready("ok")
    notifier.reloading()
    notifier.status("ok")
    notifier.watchdog()
    notifier.stopping()
    assert notifier.watchdog_interval() is None
    # Returns although stop is never set.
    await asyncio.wait_for(run_watchdog(notifier, time.monotonic, asyncio.Event()), RECV_TIMEOUT)


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_an_unusable_notify_socket_disables_notifications(value: str) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": value}) == Notifier()


def test_a_send_that_fails_is_logged_and_swallowed(
    notify_dir: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(notify_dir / "nobody-listens")})
    notifier.ready("ok")
    assert [(e["event"], e["log_level"], e["fields"]) for e in logs] == [
        ("sd_notify_failed", "debug", ["READY", "STATUS"])
    ]


async def test_a_full_queue_never_blocks_the_sender(
    notify_dir: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    path = notify_dir / "slow"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})

        def flood() -> None:
            # Far more than the kernel queues for one socket that nobody reads.
            for _ in range(5000):
                notifier.status("x" * 1000)

        # In a thread, so a blocking send fails the test instead of hanging it.
        await asyncio.wait_for(asyncio.to_thread(flood), RECV_TIMEOUT)
    assert logs and {e["event"] for e in logs} == {"sd_notify_failed"}


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/notify"} | env).watchdog_interval() == interval


async def test_watchdog_pid_mismatch_never_pings(listener: tuple[socket.socket, str]) -> None:
    sock, name = listener
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000", "WATCHDOG_PID": str(os.getpid() + 1)}
    await asyncio.wait_for(
        run_watchdog(Notifier.from_env(env), time.monotonic, asyncio.Event()), RECV_TIMEOUT
    )
    assert_nothing_queued(sock)


class Progress:
    """A fake clock and the daemon's last-progress time; each check is announced.

    The watchdog reads both, then pings or not, then waits: by the time the test sees a
    check announced, that round's datagram (if any) has been sent.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.last = 1000.0
        self.checks: asyncio.Queue[None] = asyncio.Queue()

    def clock(self) -> float:
        return self.now

    def __call__(self) -> float:
        self.checks.put_nowait(None)
        return self.last

    async def next_check(self) -> None:
        await asyncio.wait_for(self.checks.get(), RECV_TIMEOUT)


async def test_watchdog_pings_only_while_the_daemon_makes_progress(
    listener: tuple[socket.socket, str], logs: list[MutableMapping[str, Any]]
) -> None:
    sock, name = listener
    # 2 ms timeout: pings every millisecond of real time; staleness is on the fake clock.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000"})
    progress = Progress()
    stop = asyncio.Event()
    task = asyncio.create_task(run_watchdog(notifier, progress, stop, clock=progress.clock))

    await progress.next_check()
    assert receive(sock) == {"WATCHDOG": "1"}

    progress.now += 0.002  # exactly the timeout: still alive
    await progress.next_check()
    assert receive(sock) == {"WATCHDOG": "1"}

    progress.now += 0.001  # progress is now older than the timeout
    await progress.next_check()
    assert_nothing_queued(sock)
    await progress.next_check()
    assert_nothing_queued(sock)
    assert [e["event"] for e in logs] == ["watchdog_stalled"]

    progress.last = progress.now  # the daemon moves again
    await progress.next_check()
    assert receive(sock) == {"WATCHDOG": "1"}
    assert [e["event"] for e in logs] == ["watchdog_stalled", "watchdog_resumed"]

    stop.set()
    await asyncio.wait_for(task, RECV_TIMEOUT)
    assert_nothing_queued(sock)
