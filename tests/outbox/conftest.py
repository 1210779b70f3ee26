from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from balwatch.state.sqlite import SqliteStateStore
from tests.outbox.doubles import FakeClock


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def store(state_dir: Path) -> AsyncIterator[SqliteStateStore]:
    async with SqliteStateStore(state_dir) as opened:
        yield opened


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
