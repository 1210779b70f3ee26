"""A replica starting while PostgreSQL is down waits for it (saying so to systemd and the
log, the password masked) rather than exiting; what waiting cannot fix fails at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from balwatch.daemon import Daemon
from balwatch.state.base import StateError, Unreachable
from balwatch.systemd import Notifier
from tests.notify import Notifications, notify_socket
from tests.postgres import PASSWORD_ROLE, PostgresServer
from tests.waiting import within

PASSWORD = "pw-not-for-logs"


def config(tmp_path: Path, dsn: str) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    path = tmp_path / "balwatch.yaml"
    path.write_text(
        f"instance: replica-a\nstate_dir: {tmp_path}\n"
        f"state: {{backend: postgres, dsn: '{dsn}', lease_ttl: 3s}}\n"
        f"rules: ['{rules}']\nlog: {{format: json, level: info}}\n"
    )
    return path


@pytest.mark.timeout(90)
async def test_postgres_down_at_start_is_waited_for_then_the_replica_starts(
    tmp_path: Path, private_postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    private_postgres.create_password_role(PASSWORD)
    dsn = private_postgres.dsn(user=PASSWORD_ROLE, password=PASSWORD)
    private_postgres.stop()
    with notify_socket() as (sock, address):
        async with Notifications(sock) as notes:
            daemon = Daemon(config(tmp_path, dsn), notifier=Notifier(address), configure_logs=False)
            run = asyncio.create_task(daemon.run())
            _, note = await notes.wait_for(
                lambda n: n.get("STATUS", "").startswith("waiting for the state database")
            )
            assert not run.done()
            private_postgres.start()
            await within(daemon.started.wait(), "the replica to start once PostgreSQL is up", 40)
            daemon.stop()
            assert await within(run, "the replica to stop") == 0
    out = capsys.readouterr()
    assert "state_store_unreachable" in out.out and "state_store_reachable" in out.out
    assert PASSWORD not in note["STATUS"] + out.out + out.err


async def test_a_wrong_password_is_an_error_at_once_not_a_wait(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    postgres.create_password_role(PASSWORD)
    dsn = postgres.dsn(user=PASSWORD_ROLE, password="not-the-password")
    daemon = Daemon(config(tmp_path, dsn), notifier=Notifier(None), configure_logs=False)
    with pytest.raises(StateError) as raised:
        await within(daemon.run(), "the start to fail")
    assert not isinstance(raised.value, Unreachable)
    assert "not-the-password" not in str(raised.value)


async def test_a_stop_while_waiting_ends_the_wait_with_its_error(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    dsn = private_postgres.dsn()
    private_postgres.stop()
    with notify_socket() as (sock, address):
        async with Notifications(sock) as notes:
            daemon = Daemon(config(tmp_path, dsn), notifier=Notifier(address), configure_logs=False)
            run = asyncio.create_task(daemon.run())
            await notes.wait_for(lambda n: "STATUS" in n)
            daemon.stop()
            with pytest.raises(Unreachable):
                await within(run, "the start to give up")
