"""sd_notify as systemd receives it: a datagram socket in NOTIFY_SOCKET, read as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket and its NOTIFY_SOCKET value (short path: 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="bw-sd-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind(path)
        yield sock, path
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(directory)


class Notifications:
    """Collects sd_notify datagrams as ``{KEY: VALUE}`` dicts, in arrival order."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.received: list[dict[str, str]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            async with self._changed:
                self.received.append(fields)
                self._changed.notify_all()

    async def __aenter__(self) -> Notifications:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], *, after: int = 0
    ) -> tuple[int, dict[str, str]]:
        """The first notification at index >= ``after`` that satisfies ``predicate``."""

        def found() -> tuple[int, dict[str, str]] | None:
            for index in range(after, len(self.received)):
                if predicate(self.received[index]):
                    return index, self.received[index]
            return None

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), 15)
            hit = found()
            assert hit is not None
            return hit
