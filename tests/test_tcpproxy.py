"""The test-controlled TCP proxy (tests/tcpproxy.py) against a real echo server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.tcpproxy import TcpProxy
from tests.waiting import within


class Echo:
    """A loopback server that answers every chunk with itself and remembers what it got."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                self.received.extend(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> Echo:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[Echo, TcpProxy]]:
    async with Echo() as echo, TcpProxy(echo.port) as tcp:
        yield echo, tcp


async def roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await within(reader.readexactly(len(data)), "the echo")
    finally:
        writer.close()


async def test_forwards_both_ways(proxy: tuple[Echo, TcpProxy]) -> None:
    echo, tcp = proxy
    assert await roundtrip(tcp.port, b"hello") == b"hello"
    assert bytes(echo.received) == b"hello"
    assert tcp.accepted == 1


async def test_refuse_resets_open_connections_and_refuses_new_ones(
    proxy: tuple[Echo, TcpProxy],
) -> None:
    _, tcp = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.write(b"x")
    assert await within(reader.readexactly(1), "the echo") == b"x"
    await tcp.cut()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await within(reader.readexactly(1), "the connection to be reset")
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", tcp.port)
    await tcp.restore()
    assert await roundtrip(tcp.port, b"back") == b"back"


async def test_blackhole_passes_nothing_until_restored(proxy: tuple[Echo, TcpProxy]) -> None:
    echo, tcp = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.write(b"a")
    assert await within(reader.readexactly(1), "the echo") == b"a"
    await tcp.cut("blackhole")
    # The open connection and a new one both stay open; what they send goes nowhere.
    writer.write(b"lost")
    await writer.drain()
    reader2, writer2 = await within(asyncio.open_connection("127.0.0.1", tcp.port), "connect")
    writer2.write(b"lost too")
    await writer2.drain()
    await within(tcp.wait_dropped(len(b"lost") + len(b"lost too")), "the blackhole to swallow")
    assert bytes(echo.received) == b"a"
    await tcp.restore()
    # Held connections are reset (their streams lost bytes); new ones forward again.
    for held in (reader, reader2):
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await within(held.readexactly(1), "a held connection to be reset")
    writer.close()
    writer2.close()
    assert await roundtrip(tcp.port, b"again") == b"again"
    assert bytes(echo.received) == b"aagain"


async def test_upstream_down_closes_the_client(proxy: tuple[Echo, TcpProxy]) -> None:
    _, tcp = proxy
    dead = TcpProxy(1)  # nothing listens on port 1 of loopback
    await dead.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", dead.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await within(reader.readexactly(1), "the client to be closed")
        writer.close()
    finally:
        await dead.stop()
    assert tcp.open_connections == 0
