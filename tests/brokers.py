"""A real Mosquitto broker for tests, and an MQTT subscriber that collects what it receives.

Tests start the packaged ``mosquitto`` binary on a free loopback port instead of mocking
MQTT: retained messages, wills, acknowledgements and reconnects are the broker's
behaviour, and only a real broker shows whether the sink gets them right.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt

from tests.waiting import within

_INSTALL_HINT = (
    "the mosquitto broker is required by these tests and was not found; "
    "install it (Debian/Ubuntu: apt-get install mosquitto)"
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
        None,
    )
    if found is None:
        raise RuntimeError(_INSTALL_HINT + f" ({name} missing)")
    return found


async def wait_for_port(port: int, *, timeout: float, process: asyncio.subprocess.Process) -> None:
    """Poll until ``port`` accepts a connection; fail early if the process died."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                message = f"nothing listening on 127.0.0.1:{port} after {timeout}s"
                raise TimeoutError(message) from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the CA and certificates with the ``openssl`` command line tool."""
    openssl = _tool("openssl")
    d = directory
    files = TlsFiles(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / "ca.key"), "-out", str(files.ca), "-days", "2",
        "-subj", "/CN=balwatch test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for name, cert, key, ext in (
        ("server", files.server_cert, files.server_key, "subjectAltName=IP:127.0.0.1"),
        ("client", files.client_cert, files.client_key, "extendedKeyUsage=clientAuth"),
    ):
        csr = d / f"{name}.csr"
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN=balwatch test {name}",
        )  # fmt: skip
        run(
            "x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile),
        )  # fmt: skip
    return files


class Mosquitto:
    """The ``mosquitto`` binary on a free loopback port; ``async with Mosquitto() as broker``.

    :meth:`stop` and :meth:`start` again reuse the same port, so a test can take the
    broker away and bring it back under a client that keeps reconnecting. ``users`` turns
    on password authentication (the file is made with ``mosquitto_passwd``); ``acl`` is the
    text of an ACL file; ``tls`` adds a TLS listener (``tls_port``) that requires a client
    certificate signed by the same CA; ``extra_config`` is appended to the config file.
    """

    def __init__(
        self,
        *,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: TlsFiles | None = None,
        extra_config: str = "",
        startup_timeout: float = 10.0,
    ) -> None:
        self._binary = _tool("mosquitto")
        self._dir = Path(tempfile.mkdtemp(prefix="balwatch-mosquitto-"))
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self._startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._config = self._dir / "mosquitto.conf"
        self._config.write_text(self._config_text(persistence, users, acl, tls) + extra_config)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """What the broker logged so far, for assertion messages."""
        path = self._dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config_text(
        self,
        persistence: bool,
        users: dict[str, str] | None,
        acl: str | None,
        tls: TlsFiles | None,
    ) -> str:
        lines = [
            "per_listener_settings false",
            f"log_dest file {self._dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self._dir}/",
            f"allow_anonymous {'false' if users else 'true'}",
            f"listener {self.port} 127.0.0.1",
        ]
        if os.geteuid() == 0:
            # As root mosquitto switches to its own user, which cannot read our temp dir.
            lines.append("user root")
        if users:
            password_file = self._dir / "passwd"
            password_file.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    [_tool("mosquitto_passwd"), "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {password_file}")
        if acl is not None:
            acl_file = self._dir / "acl"
            acl_file.write_text(acl)
            lines.append(f"acl_file {acl_file}")
        if tls:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        if self._process is not None and self._process.returncode is None:
            raise RuntimeError("mosquitto is already running")
        self._process = await asyncio.create_subprocess_exec(
            self._binary,
            "-c",
            str(self._config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            for port in (self.port, self.tls_port):
                if port is not None:
                    await wait_for_port(port, timeout=self._startup_timeout, process=self._process)
        except (RuntimeError, TimeoutError) as exc:
            await self.kill()
            raise RuntimeError(f"mosquitto did not start: {exc}\n{self.log}") from exc

    async def stop(self) -> None:
        """Graceful stop (SIGTERM): a persistent broker saves its retained messages."""
        await self._end(graceful=True)

    async def kill(self) -> None:
        """SIGKILL: nothing is saved, clients see the connection drop."""
        await self._end(graceful=False)

    async def _end(self, *, graceful: bool) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        if graceful:
            process.terminate()
        else:
            process.kill()
        await within(process.wait(), "mosquitto to exit")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


class Subscriber:
    """An aiomqtt client that puts every message it receives on :attr:`messages`.

    :meth:`drain` is the wait-free way to say "everything published so far": it sends a
    marker to itself through the broker, which the broker delivers after every message
    it accepted earlier, and returns what arrived before the marker.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.messages: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._marker_topic = f"balwatch-test/marker/{uuid.uuid4().hex}"
        self._markers: dict[str, asyncio.Event] = {}

    async def _read(self) -> None:
        async for message in self._client.messages:
            if message.topic.value == self._marker_topic:
                assert isinstance(message.payload, bytes)
                self._markers[message.payload.decode()].set()
            else:
                self.messages.put_nowait(message)

    async def get(self, timeout: float = 5.0) -> aiomqtt.Message:
        return await within(self.messages.get(), "an MQTT message", timeout)

    async def drain(self, timeout: float = 5.0) -> list[aiomqtt.Message]:
        token = uuid.uuid4().hex
        arrived = self._markers[token] = asyncio.Event()
        await self._client.publish(self._marker_topic, token, qos=1)
        await within(arrived.wait(), "the broker to pass on everything published", timeout)
        del self._markers[token]
        collected = []
        while not self.messages.empty():
            collected.append(self.messages.get_nowait())
        return collected


@contextlib.asynccontextmanager
async def subscribe(
    port: int,
    topics: Sequence[str],
    *,
    qos: int = 1,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[Subscriber]:
    """Connect, subscribe (retained messages arrive first) and collect until the block ends."""
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=protocol, username=username, password=password
    ) as client:
        subscriber = Subscriber(client)
        await client.subscribe(subscriber._marker_topic, qos=1)
        for topic in topics:
            await client.subscribe(topic, qos=qos)
        reader = asyncio.create_task(subscriber._read())
        try:
            yield subscriber
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader
