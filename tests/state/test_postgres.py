"""The PostgreSQL store's own promises, beyond the interface: clear errors that never show
the DSN's secrets, refusing a database that is not balwatch's, migrations that replicas
starting together run once, and the store chosen by the config."""

from __future__ import annotations

import asyncio
import sys
import traceback
from pathlib import Path

import psycopg
import pytest

from balwatch.config import load_config
from balwatch.secret import Secret
from balwatch.state import POSTGRES_EXTRA_HINT, state_store
from balwatch.state.base import AlertCommit, RoutedAlert, StateError
from balwatch.state.postgres import SCHEMAS, PostgresStateStore
from balwatch.state.sqlite import SqliteStateStore
from tests.brokers import free_port
from tests.outbox.doubles import alert
from tests.postgres import PASSWORD_ROLE, PostgresServer
from tests.waiting import within

PASSWORD = "pg-Secret-7f3a9c"


def store(dsn: str, **kwargs: object) -> PostgresStateStore:
    return PostgresStateStore(Secret(dsn), instance="replica-a", timeout=3, **kwargs)  # type: ignore[arg-type]


async def refused(dsn: str) -> str:
    """Opening a store on ``dsn`` fails: its message, shown every way it may be shown."""
    with pytest.raises(StateError) as caught:
        async with store(dsn):
            pass
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in texts:
        assert PASSWORD not in text
    return str(error)


async def test_a_wrong_password_is_a_clear_error_without_it(postgres: PostgresServer) -> None:
    postgres.create_password_role("the-right-one")
    message = await refused(postgres.dsn(user=PASSWORD_ROLE, password=PASSWORD))
    assert "password authentication failed" in message
    assert message.startswith(f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres.port}/postgres:")


async def test_a_missing_database_is_a_clear_error(postgres: PostgresServer) -> None:
    message = await refused(postgres.dsn("no_such_db", password=PASSWORD))
    assert 'database "no_such_db" does not exist' in message


async def test_nothing_listening_is_a_clear_error() -> None:
    message = await refused(f"host=127.0.0.1 port={free_port()} password={PASSWORD}")
    assert "cannot connect to PostgreSQL" in message and "127.0.0.1" in message


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 password={PASSWORD} {PASSWORD}",  # libpq quotes the bad word back
        f"host=127.0.0.1 pasword={PASSWORD}",
        f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db",
    ],
)
async def test_a_malformed_dsn_is_refused_without_showing_it(dsn: str) -> None:
    assert PASSWORD not in PostgresStateStore(Secret(dsn), instance="a").location
    await refused(dsn)


async def test_the_location_names_the_server_never_the_password() -> None:
    made = store(f"postgresql://balwatch:{PASSWORD}@db.internal:6432/alerts?sslmode=require")
    assert made.location == "postgresql://balwatch@db.internal:6432/alerts"


async def test_a_database_of_another_program_is_refused_untouched(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    message = await refused(postgres_dsn)
    assert "holds tables of another program (invoices)" in message
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("invoices",)]


async def test_a_schema_of_its_own_in_a_shared_database(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
        conn.execute("CREATE SCHEMA balwatch")
    async with store(f"{postgres_dsn}?options=-csearch_path%3Dbalwatch") as made:
        assert await made.counts() == {}


async def test_a_newer_schema_is_refused_and_left_as_it_is(postgres_dsn: str) -> None:
    async with store(postgres_dsn):
        pass
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE balwatch_schema SET version = 99 WHERE component = 'cluster'")
        # As if this balwatch brought the first marker table: not created on a refusal.
        conn.execute("DROP TABLE balwatch_marker")
        conn.execute("UPDATE balwatch_schema SET version = 0 WHERE component = 'engine'")
    message = await refused(postgres_dsn)
    assert "cluster tables are at version 99, newer than this balwatch" in message
    with psycopg.connect(postgres_dsn) as conn:
        versions = dict(conn.execute("SELECT component, version FROM balwatch_schema").fetchall())
    assert (versions["engine"], versions["cluster"]) == (0, 99)


async def test_replicas_starting_together_migrate_once(postgres_dsn: str) -> None:
    stores = [store(postgres_dsn) for _ in range(4)]
    await asyncio.gather(*(made.open() for made in stores))
    try:
        with psycopg.connect(postgres_dsn) as conn:
            versions = dict(conn.execute("SELECT component, version FROM balwatch_schema"))
        assert versions == {component: len(steps) for component, steps in SCHEMAS}
    finally:
        await asyncio.gather(*(made.close() for made in stores))


async def test_the_config_chooses_the_store(tmp_path: Path, postgres_dsn: str) -> None:
    config_file = tmp_path / "balwatch.yaml"
    config_file.write_text("state_dir: state\n")
    assert isinstance(state_store(load_config(config_file, {})), SqliteStateStore)
    config_file.write_text(
        "instance: replica-b\nstate: {backend: postgres, dsn: '${PG_DSN}', lease_ttl: 4s}\n"
    )
    made = state_store(load_config(config_file, {"PG_DSN": postgres_dsn}))
    assert isinstance(made, PostgresStateStore)
    assert (made.instance, made.lease_ttl, made.create) == ("replica-b", 4.0, True)
    cli = state_store(load_config(config_file, {"PG_DSN": postgres_dsn}), exclusive=False)
    assert isinstance(cli, PostgresStateStore) and not cli.create


async def test_without_the_driver_the_error_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "balwatch.yaml"
    config_file.write_text("state: {backend: postgres, dsn: 'host=db'}\n")
    config = load_config(config_file, {})
    # As if psycopg were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "balwatch.state.postgres")
    with pytest.raises(StateError) as caught:
        state_store(config)
    assert str(caught.value) == POSTGRES_EXTRA_HINT
    assert "pip install 'balwatch[postgres]'" in POSTGRES_EXTRA_HINT


async def test_the_store_carries_on_after_the_server_restarts(
    private_postgres: PostgresServer,
) -> None:
    dsn = private_postgres.create_database()
    async with store(dsn, lease_ttl=2) as made:
        await made.commit(AlertCommit([RoutedAlert(alert("fp1", 1), ["mqtt"])]))
        private_postgres.kill()
        with pytest.raises(Exception):  # noqa: B017 - psycopg's or the pool's own error
            await made.commit(AlertCommit([RoutedAlert(alert("fp1", 2), ["mqtt"])]))
        private_postgres.start()

        async def committed() -> None:
            while True:  # as the publisher does with alerts it holds: try again
                try:
                    await made.commit(AlertCommit([RoutedAlert(alert("fp1", 3), ["mqtt"])]))
                except Exception:  # noqa: S112 - still reconnecting
                    continue
                return

        # A new connection attempt starts at most reconnect_timeout (here 1 s) after the last.
        await within(committed(), "a commit after the restart", 5)
        assert [d.alert["id"] for d in await made.pending("mqtt")] == ["fp1:1", "fp1:3"]


async def test_closing_is_bounded_while_the_server_is_frozen(
    private_postgres: PostgresServer,
) -> None:
    """A frozen server (SIGSTOP, a VM pause) answers no query and its kernel still acks, so
    a claim confirmation in flight never returns: closing the store (at SIGTERM) must not
    wait for it, or the daemon never stops until the server comes back."""
    dsn = private_postgres.create_database()
    made = store(dsn, lease_ttl=2)
    await made.open()
    try:
        await made.commit(AlertCommit([RoutedAlert(alert("fp1", 1), ["mqtt"])]))
        [delivery] = await made.pending("mqtt")
        private_postgres.pause()
        asking = asyncio.create_task(made.claimed([delivery.id]))
        await asyncio.sleep(0.5)
        await within(made.close(), "closing the store on a frozen server", 15)
        asking.cancel()  # its caller, the outbox worker, is stopped before the store
    finally:
        private_postgres.resume()
