from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from balwatch.outbox.store import DB_FILE, OutboxStore
from tests.outbox.doubles import FakeClock


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / DB_FILE


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[OutboxStore]:
    opened = await OutboxStore.open(db_path)
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
