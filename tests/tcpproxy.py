"""A TCP proxy on loopback that a test controls: forward, cut, restore.

Cutting the network between one replica and PostgreSQL (issue 14) without touching the
server or the other replicas: that replica's DSN points at the proxy, the others' at the
server. :meth:`TcpProxy.cut` takes the link away in one of two ways a real network fails:

* ``refuse`` (default): every open connection is reset and new ones are refused, as when
  the server's host is down or a firewall rejects;
* ``blackhole``: open connections stay open but nothing passes either way, and new ones
  are accepted and then hear nothing, as when packets are dropped (a partition): only the
  client's own timeouts notice.

:meth:`TcpProxy.restore` forwards again (connections cut while blackholed are closed then:
their streams lost bytes, so they cannot carry on).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal, Self

CutMode = Literal["refuse", "blackhole"]
_LINGER_0 = struct.pack("ii", 1, 0)


class _Link:
    """One client connection and, unless blackholed from the start, its upstream one."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both ends at once (RST, no FIN): what a dropped connection looks like."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                transport = writer.transport
                with contextlib.suppress(OSError):
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        # Linger 0: close() sends RST, the peer sees "connection reset".
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """``async with TcpProxy(port) as proxy:`` listens on ``proxy.port``, forwards to ``port``.

    The listening port stays the same across :meth:`cut` and :meth:`restore`.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0  # connections accepted so far, cut or not
        self.dropped = 0  # bytes read and thrown away while blackholed
        self._news = asyncio.Condition()
        self.mode: CutMode | None = None  # None: forwarding
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, mode: CutMode = "refuse") -> None:
        """Take the link away (see the module's doc for the two modes)."""
        if self.mode is not None:
            raise RuntimeError(f"already cut ({self.mode})")
        self.mode = mode
        if mode == "refuse":
            await self._close_server()
            for link in list(self._links):
                link.abort()
            self._links.clear()

    async def restore(self) -> None:
        """Forward again; connections held while blackholed are reset."""
        if self.mode is None:
            return
        mode, self.mode = self.mode, None
        if mode == "blackhole":
            for link in list(self._links):
                link.abort()
            self._links.clear()
        else:
            await self.start()

    async def stop(self) -> None:
        await self._close_server()
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode is not None:
                # Blackholed: accept, then let nothing through until restored.
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                link.abort()
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            # Either direction ending ends both (the PostgreSQL protocol does not half-close).
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy until either end closes; while blackholed, read and drop instead."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self.mode is not None:
                    await self._drop(data)
                    continue
                sink.write(data)
                await sink.drain()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._drop(data)

    async def _drop(self, data: bytes) -> None:
        async with self._news:
            self.dropped += len(data)
            self._news.notify_all()

    async def wait_dropped(self, count: int) -> None:
        """Until ``count`` bytes in all were swallowed by a blackhole (no timeout here)."""
        async with self._news:
            await self._news.wait_for(lambda: self.dropped >= count)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
