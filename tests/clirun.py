"""Running the ``balwatch`` command as a user does: a real process, its output captured."""

from __future__ import annotations

import asyncio
import os
import sys


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``balwatch ARGS`` (60 s at most)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balwatch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
