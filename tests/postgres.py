"""A private PostgreSQL server for tests: the packaged binaries, a temporary data directory,
a free loopback port.

Tests talk to a real server instead of mocking psycopg: locks, transactions, the server's
clock and its errors are PostgreSQL's, and a crash is a real SIGKILL. One server serves a
whole test session (``postgres`` fixture in ``tests/conftest.py``); each test gets a
database of its own (``postgres_dsn``). A test that stops or kills the server starts one
of its own (``private_postgres``), so the others never see it go.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user
(the data directory is then its), started directly with ``Popen(user=...)`` so the process
we hold is the postmaster itself and :meth:`PostgresServer.kill` reaches it and its
backends (they share its process group).

Authentication is ``trust`` on 127.0.0.1, except for the role :data:`PASSWORD_ROLE`, which
must give its password (``scram-sha-256``): the tests of a wrong password use it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import psycopg

from tests.brokers import free_port

SUPERUSER: Final = "postgres"
PASSWORD_ROLE: Final = "balwatch_password"
_INSTALL_HINT: Final = (
    "the PostgreSQL server binaries are required by these tests and were not found under "
    "/usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install postgresql), "
    "or run tests/run, which does"
)
_START_TIMEOUT: Final = 30.0


def bin_dir() -> Path:
    """The newest installed PostgreSQL's ``bin`` directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not found:
        raise RuntimeError(_INSTALL_HINT)
    return Path(found[-1]).parent


class PostgresServer:
    """One PostgreSQL server in a new temporary directory; ``with PostgresServer() as
    server:`` starts it and removes everything when done.

    The directory is made here, not under pytest's ``tmp_path``: that one is 0700 root's,
    and the ``postgres`` user must reach its data directory.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable  # fsync on: for benchmarks; tests need no power-cut safety
        self.root = Path(tempfile.mkdtemp(prefix="balwatch-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.bin = bin_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._user = SUPERUSER if os.geteuid() == 0 else None
        self._databases = 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def dsn(
        self, db: str = "postgres", *, user: str = SUPERUSER, password: str | None = None
    ) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the server (initialising the data directory the first time); returns once
        it accepts connections. Again after :meth:`stop` or :meth:`kill`: same data, same port."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError("the PostgreSQL server is already running")
        if not self.data.exists():
            self._initdb()
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's, kept open
        with log:
            self._process = subprocess.Popen(
                [
                    str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                    "-c", "max_connections=300",
                    # A process crash loses nothing of the OS's page cache: no fsync needed.
                    *([] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]),
                ],
                stdout=log, stderr=subprocess.STDOUT, user=self._user, group=self._group,
                start_new_session=True,
            )  # fmt: skip
        self._wait_ready()

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are cut, the server writes a checkpoint and ends."""
        self._end(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a crash of its host would."""
        self._end(signal.SIGKILL, group=True)

    def pause(self) -> None:
        """SIGSTOP the postmaster and its backends: a frozen server, whose kernel still
        accepts and acknowledges, so no TCP timeout notices."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def _signal_group(self, sig: signal.Signals) -> None:
        """The postmaster and its children (each backend is in a process group of its own)."""
        if self._process is None or self._process.poll() is not None:
            return
        pids = [self._process.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self._process.pid:
                    pids.append(int(Path(stat).parent.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (named ``name``, or ``test_N``); returns its DSN."""
        if name is None:
            self._databases += 1
            name = f"test_{self._databases}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def create_password_role(self, password: str) -> None:
        """:data:`PASSWORD_ROLE`, which logs in only with ``password`` and may create tables."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,)
            ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        self.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{password}'")

    def execute(self, sql: str, db: str = "postgres") -> None:
        """One statement as the superuser, outside a transaction (CREATE DATABASE needs it)."""
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            conn.execute(sql.encode())

    # --- internals -----------------------------------------------------------------------

    @property
    def _group(self) -> str | None:
        return SUPERUSER if self._user is not None else None

    def _initdb(self) -> None:
        self.data.mkdir(parents=True)
        if self._user is not None:
            shutil.chown(self.root, self._user, self._user)
            shutil.chown(self.data, self._user, self._user)
        done = subprocess.run(
            [
                str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C",
            ],
            capture_output=True, text=True, user=self._user, group=self._group,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stderr[-2000:]}")
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )

    def _wait_ready(self) -> None:
        """Until a connection is accepted: the port opens before recovery is done."""
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                log = (self.root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL exited with {self._process.returncode}:\n{log}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _end(self, sig: signal.Signals, *, group: bool = False) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        process.wait(timeout=_START_TIMEOUT)
        if group:  # the backends too, before the next start finds their shared memory
            deadline = time.monotonic() + _START_TIMEOUT
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
