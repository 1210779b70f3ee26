"""``balwatch state migrate`` and ``balwatch check --connect``, run as a user runs them,
against a real PostgreSQL server; the DSN's password never shows."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from balwatch.rules.engine import AccountState, AlertState
from balwatch.rules.history import HistoryChanges
from balwatch.secret import Secret
from balwatch.selfalerts import SelfAlerts
from balwatch.silence import new_silence
from balwatch.state.base import AlertCommit, RoutedAlert, StateChange, StateSnapshot
from balwatch.state.postgres import PostgresStateStore
from balwatch.state.sqlite import SqliteStateStore
from tests.commands import run_cli
from tests.outbox.doubles import alert
from tests.postgres import PASSWORD_ROLE, PostgresServer

T0 = 1_800_000_000.0
PASSWORD = "migrate-Pa55-0d1e"


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A new database, reached with a password."""
    postgres.create_password_role(PASSWORD)
    name = postgres.create_database().rsplit("/", 1)[1]
    return postgres.dsn(name, user=PASSWORD_ROLE, password=PASSWORD)


def firing(fingerprint: str) -> AlertState:
    return AlertState(
        fingerprint=fingerprint, rule="low", when="available < 5000", clear=None,
        severity="warning", account="treasury", exchange="bitso", venue="bitso", asset="BTC",
        phase="firing", since=T0, last_notified=T0, values={"available": Decimal("4000.25")},
        sent_to=("mqtt",),
    )  # fmt: skip


async def fill(state_dir: Path) -> None:
    """A daemon's state: a firing alert, history, a self-alert, a marker, a silence, and an
    outbox with a pending delivery, a bundled pair and a dead letter."""
    [self_alert] = SelfAlerts(lambda: T0).fire(
        "source_auth_failed", "treasury", "bitso", "bad key", "critical"
    )
    async with SqliteStateStore(state_dir) as store:
        await store.commit(
            AlertCommit(
                [RoutedAlert(alert("fp1", 1), ["mqtt", "hook"])],
                [StateChange("fp1", "low", firing("fp1"))],
                self_alerts=[self_alert],
                markers={"topic_layout": 2},
            )
        )
        chat = [d for n in (2, 3) for d in await store.commit(
            AlertCommit([RoutedAlert(alert(f"fp{n}", 1), ["chat"])])
        )]  # fmt: skip
        await store.bundle("m1", [d.id for d in chat])
        [hook] = [d for d in await store.pending("hook")]
        await store.fail(hook.id, "HTTP 404: no such hook", dead=True)
        await store.flush(
            StateSnapshot(
                [firing("fp1")],
                [AccountState("treasury", "bitso", first_seen=T0, last_ok=T0)],
                HistoryChanges(
                    [],
                    [],
                    [
                        (("treasury", "bitso", "BTC", "available"), T0 + t, Decimal(f"{t}.5"))
                        for t in range(3)
                    ],
                ),
            )
        )
        await store.add_silence(
            new_silence(
                ["rule=low"],
                starts_at=T0,
                ends_at=T0 + 3600,
                author="ana",
                comment="maintenance",
                now=T0,
            )
        )


async def test_migrate_copies_everything_and_refuses_to_copy_twice(
    tmp_path: Path, dsn: str
) -> None:
    state_dir = tmp_path / "state"
    await fill(state_dir)
    env = {"PG_DSN": dsn}
    args = ["state", "migrate", "--from", f"sqlite:{state_dir}", "--to", "postgres:env:PG_DSN"]
    code, out, err = await run_cli(*args, "--instance", "replica-a", env=env)
    assert (code, err) == (0, "")
    assert PASSWORD not in out
    assert out.startswith(
        "copied 1 alert state, 1 account, 3 history samples, 1 self-alert, 1 marker, "
        "3 pending deliveries, 1 dead letter, 1 silence from "
    )
    async with SqliteStateStore(state_dir) as source:
        before = await source.load(0)
        outbox_before = await source.outbox()
        silences = await source.silences()
    async with PostgresStateStore(Secret(dsn), instance="replica-a") as target:
        after = await target.load(0)
        assert after.alerts == before.alerts and after.accounts == before.accounts
        assert after.samples == before.samples and after.markers == {"topic_layout": 2}
        assert after.self_alerts == before.self_alerts
        assert await target.silences() == silences
        rows = await target.outbox()
        assert [(r.sink, r.status, r.attempts, r.error, r.alert) for r in rows] == [
            (r.sink, r.status, r.attempts, r.error, r.alert) for r in outbox_before
        ]
        assert [(d.alert["id"], d.message) for d in await target.pending("chat")] == [
            ("fp2:1", "m1"),
            ("fp3:1", "m1"),
        ]
        assert [d.alert["id"] for d in await target.pending("mqtt")] == ["fp1:1"]

    code, out, err = await run_cli(*args, env=env)
    assert code == 1 and "holds balwatch state already" in err and "--force" in err
    assert PASSWORD not in out + err
    code, out, err = await run_cli(*args, "--force", env=env)
    assert code == 0 and "0 silences" in out


async def test_migrate_refuses_while_the_daemon_holds_the_state(tmp_path: Path, dsn: str) -> None:
    state_dir = tmp_path / "state"
    await fill(state_dir)
    async with SqliteStateStore(state_dir):  # as the running daemon does
        code, out, err = await run_cli(
            "state", "migrate", "--from", f"sqlite:{state_dir}", "--to", f"postgres:{dsn}"
        )
    assert code == 1 and "another balwatch is running" in err
    assert PASSWORD not in out + err


async def test_migrate_says_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    code, _, err = await run_cli(
        "state", "migrate", "--from", f"sqlite:{tmp_path}", "--to", "postgres:env:PG_DSN"
    )
    assert code == 2 and "no balwatch.db in" in err
    (tmp_path / "balwatch.db").touch()
    code, _, err = await run_cli(
        "state", "migrate", "--from", f"sqlite:{tmp_path}", "--to", f"mysql://u:{PASSWORD}@h/x"
    )
    assert code == 2 and "expected postgres:env:NAME or postgres:DSN" in err
    assert PASSWORD not in err


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "balwatch.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    (tmp_path / "rules").mkdir(exist_ok=True)
    return path


async def test_check_connect_opens_the_store_and_says_why_not(
    tmp_path: Path, dsn: str, postgres: PostgresServer
) -> None:
    path = config(tmp_path, "state: {backend: postgres, dsn: '${PG_DSN}'}\ninstance: replica-a\n")
    code, out, err = await run_cli("check", "-c", str(path), "--connect", env={"PG_DSN": dsn})
    assert code == 0, err
    assert f"state: postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres.port}/" in out
    assert "reachable, no balwatch state yet" in out
    async with PostgresStateStore(Secret(dsn), instance="replica-a"):
        pass  # as the first `balwatch run` does: the tables exist now
    code, out, err = await run_cli("check", "-c", str(path), "--connect", env={"PG_DSN": dsn})
    assert code == 0 and out.rstrip().endswith("/" + dsn.rsplit("/", 1)[1] + ": ok")
    wrong = dsn.replace(PASSWORD, "not-" + PASSWORD)
    code, out, err = await run_cli("check", "-c", str(path), "--connect", env={"PG_DSN": wrong})
    assert code == 1 and "password authentication failed" in err
    assert PASSWORD not in out + err


async def test_check_connect_on_sqlite(tmp_path: Path) -> None:
    path = config(tmp_path, "state_dir: state\n")
    code, out, _ = await run_cli("check", "-c", str(path), "--connect")
    assert code == 0 and "no balwatch state yet" in out
    async with SqliteStateStore(tmp_path / "state"):
        code, out, _ = await run_cli("check", "-c", str(path), "--connect")  # beside a daemon
    assert code == 0 and out.rstrip().endswith("balwatch.db: ok")


async def test_silences_and_the_outbox_by_hand_on_postgres(tmp_path: Path, dsn: str) -> None:
    path = config(tmp_path, "state: {backend: postgres, dsn: '${PG_DSN}'}\n")
    env = {"PG_DSN": dsn}
    code, _, err = await run_cli(
        "silence", "add", "-c", str(path), "--match", "rule=low", "--for", "2h",
        "--comment", "maintenance", env=env,
    )  # fmt: skip
    assert code == 1 and "no state database here" in err  # no daemon ever ran there
    async with PostgresStateStore(Secret(dsn), instance="replica-a") as daemon:
        code, out, err = await run_cli(
            "silence", "add", "-c", str(path), "--match", "rule=low", "--for", "2h",
            "--comment", "maintenance", env=env,
        )  # fmt: skip
        assert code == 0, err
        [added] = await daemon.silences()
        assert added.comment == "maintenance"
        code, out, err = await run_cli("outbox", "list", "-c", str(path), env=env)
        assert code == 0, err
    assert PASSWORD not in out + err
