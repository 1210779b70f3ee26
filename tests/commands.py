"""The balwatch command as a user runs it: a child process, its output collected as written.

:func:`run_cli` runs a command to its end; :func:`balwatch_run` starts the daemon and leaves
it running while the test drives it, reading its output as it comes (pipes never fill).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import within

# SIGTERM to exit: stop polling, drain the outbox (grace 10 s).
EXIT_TIMEOUT = 30.0


async def run_cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m balwatch ARGS...`` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balwatch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await within(proc.communicate(), f"balwatch {' '.join(args)} to finish", 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Process:
    """``balwatch run`` with its output collected as it is written."""

    proc: asyncio.subprocess.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    _wrote: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output(self) -> str:
        return (bytes(self.stdout) + bytes(self.stderr)).decode(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        code = await within(self.proc.wait(), "balwatch run to exit", timeout)
        await within(asyncio.gather(*self.readers), "the end of balwatch run's output")
        return code

    async def wait_output(self, text: str, timeout: float = 20.0) -> None:
        """Return once ``text`` appeared on stdout or stderr."""

        async def written() -> None:
            while text not in self.output:
                if self.proc.returncode is not None and all(r.done() for r in self.readers):
                    raise AssertionError(f"balwatch run exited before printing {text!r}")
                self._wrote.clear()
                await self._wrote.wait()

        await within(written(), f"{text!r} in balwatch run's output", timeout)

    async def _pump(self, stream: asyncio.StreamReader | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            into.extend(chunk)
            self._wrote.set()
        self._wrote.set()  # the end of the stream is news too


@contextlib.asynccontextmanager
async def balwatch_run(
    config: Path,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> AsyncIterator[Process]:
    """Start ``python -m balwatch run -c config``; killed on exit if still running.

    ``preexec_fn`` runs in the child before balwatch starts (say, to set a resource limit).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balwatch",
        "run",
        "-c",
        str(config),
        env={**os.environ, **(env or {})},
        cwd=cwd or config.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    process = Process(proc)
    process.readers = [
        asyncio.create_task(process._pump(proc.stdout, process.stdout)),
        asyncio.create_task(process._pump(proc.stderr, process.stderr)),
    ]
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.gather(*process.readers, return_exceptions=True)
