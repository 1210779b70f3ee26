"""``balwatch run`` against a hostile network (issue 12, item 1): real sockets, a real process.

A thousand connections that send half a request head and then nothing used to pin one file
descriptor each until the process ran out (systemd's default limit is 1,024): ``/healthz``
stopped answering, asyncio printed a traceback for every failed accept (290,000 lines in
45 s), and the config watcher, unable to open the config, raised a ``config_error`` alert.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.brokers import free_port
from tests.commands import balwatch_run
from tests.conftest import StartSim
from tests.notify import Notifications, notify_socket
from tests.test_daemon import bitso, bitso_account, write_config

SYSTEMD_DEFAULT_NOFILE = 1024
FLOOD = 1050  # as in the report: just past the descriptor limit


def systemd_default_limits() -> None:
    """In the child: the descriptor limit a systemd service gets unless it sets one."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_DEFAULT_NOFILE, SYSTEMD_DEFAULT_NOFILE))


@pytest.fixture
def room_for_the_flood() -> None:
    """The test's own side holds the flood's sockets open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLOOD + 200
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the test needs {needed} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def half_request(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /api/balances HTTP/1.1\r\nHost: balwatch\r\nX-Slow: ")
    return sock


@pytest.mark.usefixtures("room_for_the_flood")
async def test_a_flood_of_half_sent_requests_starves_nothing_and_floods_no_log(
    tmp_path: Path, start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(bitso_account())
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: low, when: available < 1}\n")
    port = free_port()
    config = write_config(
        tmp_path / "balwatch.yaml", state_dir=tmp_path / "state", rules=rules,
        accounts=bitso("treasury", sim.url),
    )  # fmt: skip
    config.write_text(
        config.read_text()
        .replace("level: warning", "level: info")
        .replace("rules: [", f"http: {{listen: '127.0.0.1:{port}'}}\nrules: [")
    )
    flood: list[socket.socket] = []
    with notify_socket() as (sock, notify_path):
        async with (
            Notifications(sock) as notes,
            balwatch_run(
                config, {"NOTIFY_SOCKET": notify_path}, preexec_fn=systemd_default_limits
            ) as daemon,
        ):
            await notes.wait_for(lambda n: n.get("READY") == "1")
            try:
                for _ in range(FLOOD):
                    flood.append(await half_request(port))
                async with asyncio.timeout(5):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert (resp.status, await resp.text()) == (200, "ok")
                    async with http.get(f"http://127.0.0.1:{port}/api/balances") as resp:
                        assert resp.status == 200
            finally:
                for s in flood:
                    s.close()
            daemon.proc.terminate()
            assert await daemon.wait() == 0, daemon.output
    output = daemon.output
    assert "Too many open files" not in output
    assert "Traceback" not in output
    assert "config_error" not in output and "reload" not in output
    # One line when the cap was first reached; nothing per connection.
    assert output.count("http_connection_limit_reached") == 1, output
    assert len(output.splitlines()) < 20, output
