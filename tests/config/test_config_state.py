"""The ``state:`` block: which store, how to reach PostgreSQL, the lease time; the DSN is a
secret, its password too."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.config import load_config
from balwatch.config.load import load_config_with_warnings, load_state_settings
from balwatch.errors import ConfigError

WriteFile = Callable[..., Path]
PASSWORD = "pg-Pa55word-e41c"


def problems(write: WriteFile, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(text), environ or {})
    return [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems]


def test_sqlite_is_the_default(write: WriteFile) -> None:
    config = load_config(write("{}\n"), {})
    assert (config.state.backend, config.state.dsn, config.state.lease_ttl) == ("sqlite", None, 8.0)
    assert config.state.secrets() == []


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://balwatch:{PASSWORD}@db.internal:5432/balwatch?sslmode=verify-full",
        f"postgres://balwatch:{PASSWORD}@db/balwatch",
        f"host=db dbname=balwatch user=balwatch password={PASSWORD}",
    ],
)
def test_postgres_with_a_dsn_from_the_environment(write: WriteFile, dsn: str) -> None:
    path = write("state: {backend: postgres, dsn: '${PG_DSN}', lease_ttl: 5s}\n")
    config = load_config(path, {"PG_DSN": dsn})
    assert config.state.backend == "postgres" and config.state.lease_ttl == 5.0
    assert config.state.dsn is not None and config.state.dsn.reveal() == dsn
    # The redactor masks the whole DSN and the password on its own.
    assert {s.reveal() for s in config.secrets()} == {dsn, PASSWORD}
    for text in (str(config), repr(config), config.model_dump_json(), str(config.state)):
        assert PASSWORD not in text


def test_a_password_is_found_however_the_dsn_spells_it(write: WriteFile) -> None:
    path = write("state: {backend: postgres, dsn: '${PG_DSN}'}\n")
    for dsn, password in [
        ("postgresql://u:p%40ss%2Fword@h/db", {"p%40ss%2Fword", "p@ss/word"}),
        ("postgresql://u@h/db?password=in-the-query", {"in-the-query"}),
        (r"host=h password='it\'s a secret' user=u", {r"'it\'s a secret'", "it's a secret"}),
        ("host=h user=u", set()),
    ]:
        config = load_config(path, {"PG_DSN": dsn})
        assert {s.reveal() for s in config.secrets()} == {dsn, *password}, dsn


def test_the_state_settings_the_cli_reads_carry_the_store_and_instance(write: WriteFile) -> None:
    path = write(
        "instance: replica-a\nstate: {backend: postgres, dsn: '${PG_DSN}'}\n"
        "accounts: [{name: a, exchange: bitso, credentials: {api_key: '${MISSING}'}}]\n"
    )
    settings = load_state_settings(path, {"PG_DSN": "host=db"})
    assert (settings.instance, settings.state.backend) == ("replica-a", "postgres")


def test_errors_say_where(write: WriteFile) -> None:
    assert problems(write, "state: {backend: mysql}\n") == [
        "1:18: expected 'sqlite' or 'postgres', got 'mysql'"
    ]
    assert problems(write, "state:\n  backend: postgres\n") == [
        "2:3: missing required key 'dsn' for backend postgres"
    ]
    assert problems(write, "state:\n  dsn: host=db\n") == [
        "2:8: dsn is for backend postgres; SQLite lives in state_dir"
    ]
    assert problems(write, "state: {backend: postgres, dsn: host=db, lease_ttl: 1s}\n") == [
        "1:53: expected a duration from 2s to 10m, got '1s'"
    ]


def test_a_malformed_dsn_is_refused_without_being_shown(write: WriteFile) -> None:
    bad = f"mysql://root:{PASSWORD}@db/x"
    with pytest.raises(ConfigError) as caught:
        load_config(write("state: {backend: postgres, dsn: '${PG_DSN}'}\n"), {"PG_DSN": bad})
    error = caught.value
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    assert all(PASSWORD not in text for text in texts)
    assert "expected a PostgreSQL connection string" in str(error)


def test_a_password_written_into_the_dsn_is_flagged(write: WriteFile) -> None:
    path = write(f"state:\n  backend: postgres\n  dsn: postgresql://u:{PASSWORD}@db/x\n")
    _, warnings = load_config_with_warnings(path, {})
    assert [(w.line, w.column, w.kind) for w in warnings] == [(3, 8, "secret in file")]
    assert PASSWORD not in str(warnings[0])
    # Without a password (client certificates, peer authentication): nothing to flag.
    _, warnings = load_config_with_warnings(
        write("state: {backend: postgres, dsn: 'host=/run/postgresql dbname=x'}\n"), {}
    )
    assert warnings == []
