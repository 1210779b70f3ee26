"""Fixtures of the fault suite: a tiny filesystem that a test can fill up for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import TinyFs

TINY_FS_BYTES = 4 * 1024 * 1024


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[TinyFs]:
    """A real small filesystem (tmpfs) at ``tmp_path / "fs"``; skipped where mount is denied.

    Only a filesystem that really runs out of space makes SQLite fail the way a full disk
    does (SQLITE_FULL from the WAL append). chmod cannot stand in: root ignores it, and an
    open database keeps writing through its descriptors anyway.
    """
    mount = shutil.which("mount")
    target = tmp_path / "fs"
    target.mkdir()
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={TINY_FS_BYTES},mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield TinyFs(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
