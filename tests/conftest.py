"""Shared fixtures: a real simulator on loopback, a real aiohttp client session, a real
PostgreSQL server (tests/postgres.py) with a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import aiohttp
import pytest
from pydantic import BaseModel

from balwatch import redact
from balwatch.adapters import REGISTRY, AccountSpec
from balwatch.adapters.http import new_session
from balwatch.config.model import DefaultsConfig
from balwatch.secret import Secret
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import SimAccount, SimState

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

StartSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture(autouse=True)
def _no_installed_secrets() -> Iterator[None]:
    """Each test starts with no process-wide secrets, whatever an earlier one installed."""
    redact.install(())
    yield
    redact.install(())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as session:
        yield session


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start a simulator serving the given accounts; stopped when the test ends."""
    running: list[Simulator] = []

    async def start(*accounts: SimAccount, **state_kwargs: object) -> Simulator:
        sim = Simulator(SimState(list(accounts), **state_kwargs))  # type: ignore[arg-type]
        await sim.start()
        running.append(sim)
        return sim

    yield start
    for sim in running:
        await sim.stop()


def account_spec(
    exchange: str,
    base_url: str,
    credentials: dict[str, str],
    *,
    name: str = "acct",
    timeout: float = 2.0,
    options: dict[str, object] | None = None,
    max_response_size: int | None = None,
) -> AccountSpec:
    """An AccountSpec as the config loader would build it, for adapter tests."""
    options_model: type[BaseModel] = REGISTRY[exchange].options_model
    return AccountSpec(
        name=name,
        base_url=base_url,
        timeout=timeout,
        credentials={k: Secret(v) for k, v in credentials.items()},
        options=options_model.model_validate(options or {}),
        max_response_size=max_response_size or DefaultsConfig().max_response_size,
    )


# Imported in the fixtures: only the tests that use PostgreSQL need psycopg and the server.
@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; tests must not stop or kill it (they
    take ``private_postgres`` for that)."""
    from tests.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres: PostgresServer) -> str:
    """The DSN of a new, empty database on the session's server."""
    return postgres.create_database()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop, kill and start again."""
    from tests.postgres import PostgresServer

    with PostgresServer() as server:
        yield server
