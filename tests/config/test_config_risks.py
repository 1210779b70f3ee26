"""Warnings for risky settings (issue 12, item 9): at FILE:LINE:COL, never fatal, never quoting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.config.load import load_config_with_warnings
from balwatch.errors import Problem

WriteFile = Callable[..., Path]
LITERAL = "LITERAL-secret-3b7e1d"
ENV = {
    "KEY": "from-env",
    "SECRET": "from-env-too",
    "TOKEN": "token-from-env",
    "SLACK_URL": "https://hooks.example/services/T0/B0/x",
}
HINT = (
    "is written in the config file; put it in a systemd credential (${cred:NAME}), a file "
    "(${file:/path}) or an environment variable (${VAR}), so the config file holds no secret"
)


def warnings(path: Path) -> list[Problem]:
    _, found = load_config_with_warnings(path, ENV)
    assert all(p.severity == "warning" for p in found)
    assert all(LITERAL not in p.message for p in found)
    return found


def where(found: list[Problem]) -> list[tuple[int, int, str]]:
    return [(p.line, p.column, p.message) for p in found]


def test_secrets_written_into_the_file_are_flagged_where_they_are(write: WriteFile) -> None:
    found = warnings(
        write(
            f"""
            rules: []
            http: {{listen: "127.0.0.1:9464", token: {LITERAL}}}
            accounts:
              - name: a
                exchange: bitso
                credentials: {{api_key: {LITERAL}, api_secret: "${{SECRET}}"}}
            sinks:
              - name: broker
                type: mqtt
                url: "mqtts://ops:{LITERAL}@broker.example:8883"
              - name: chat
                type: webhook
                format: slack
                url: "https://hooks.example/services/{LITERAL}"
              - name: audit
                type: webhook
                url: https://audit.example/hooks
                secret: {LITERAL}
                headers: {{Authorization: "Bearer {LITERAL}", X-Team: "${{KEY}}"}}
            """
        )
    )
    assert where(found) == [
        (2, 41, f"http.token {HINT}"),
        (6, 28, f"credential 'api_key' {HINT}"),
        (10, 10, f"the password in the sink URL {HINT}"),
        (14, 10, f"the webhook URL {HINT}"),
        (18, 13, f"the sink's secret {HINT}"),
        (19, 30, f"header 'Authorization' {HINT}"),
    ]


def test_references_and_loopback_simulators_are_not_flagged(write: WriteFile) -> None:
    found = warnings(
        write(
            """
            rules: []
            http: {listen: "[::1]:9464"}
            accounts:
              - name: sim
                exchange: bitso
                base_url: http://127.0.0.1:8700
                credentials: {api_key: sim-key, api_secret: sim-secret}
              - name: real
                exchange: bitso
                credentials: {api_key: "${KEY}", api_secret: "${SECRET}"}
            sinks:
              - {name: local, type: mqtt, url: "mqtt://u:p@localhost:1883"}
              - {name: chat, type: webhook, format: slack, url: "${SLACK_URL}"}
              - {name: audit, type: webhook, url: "https://audit.example/hooks"}
            """
        )
    )
    assert found == []


def test_transport_and_exposure_risks(write: WriteFile) -> None:
    found = warnings(
        write(
            """
            rules: []
            http: {listen: "0.0.0.0:9464"}
            accounts:
              - name: a
                exchange: bitso
                base_url: http://bitso-proxy.internal
                credentials: {api_key: "${KEY}", api_secret: "${SECRET}"}
            sinks:
              - {name: broker, type: mqtt, url: "mqtt://ops:${SECRET}@broker.example"}
              - {name: hook, type: webhook, url: "https://hooks.example/x", verify_tls: false}
            """
        )
    )
    assert [(p.line, p.column, p.kind) for p in found] == [
        (2, 16, "open API"),
        (6, 15, "plain-text transport"),
        (9, 37, "plain-text transport"),
        (10, 77, "TLS not verified"),
    ]
    assert "anyone who connects can read every balance" in found[0].message
    assert found[1].message.startswith("base_url uses plain http://")
    assert "use mqtts://" in found[2].message
    assert found[3].message.startswith("verify_tls: false")


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "monitoring.example:9464"])
def test_a_token_makes_a_public_listener_fine(write: WriteFile, listen: str) -> None:
    open_ = warnings(write(f'rules: []\nhttp: {{listen: "{listen}"}}\n'))
    assert [p.kind for p in open_] == ["open API"]
    guarded = warnings(write(f'rules: []\nhttp: {{listen: "{listen}", token: "${{TOKEN}}"}}\n'))
    assert guarded == []


def test_check_prints_warnings_and_still_exits_0(write: WriteFile, tmp_path: Path) -> None:
    path = write('rules: []\nhttp: {listen: "0.0.0.0:9464"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "balwatch", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"{path}:2:16: warning: http.listen is reachable")
    assert done.stdout == f"{path}: ok (0 accounts, 0 rules in 0 files, 0 sinks, 1 warning)\n"
