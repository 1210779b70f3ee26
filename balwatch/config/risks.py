"""Warnings for settings that are valid but risky: what ``check`` and the daemon's start report.

Each is a :class:`~balwatch.errors.Problem` with severity ``warning`` at the setting's
``FILE:LINE:COL``; none stops loading. Messages never quote a value: it may be a secret.

- a secret written into the file instead of a ``${...}`` reference (account credentials, a
  sink's secret, headers and chat webhook URL, a password in a sink URL, ``http.token``),
  where it is sent beyond this host: a simulator's key on loopback opens nothing real;
- a password written into ``state.dsn``, wherever the database is;
- ``verify_tls: false`` on a webhook sink;
- an exchange ``base_url`` with plain ``http://`` to a host beyond loopback;
- a password in a plain ``mqtt://`` URL to a host beyond loopback;
- ``http.listen`` beyond loopback without ``http.token``: anyone who connects reads every
  balance.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from balwatch.config.model import (
    Config,
    HttpConfig,
    MqttSinkConfig,
    WebhookSinkConfig,
    dsn_passwords,
)
from balwatch.config.substitute import Substituted
from balwatch.config.yamlsource import YamlDocument, YamlPath
from balwatch.errors import Problem

_REFERENCE_HINT: Final = (
    "put it in a systemd credential (${cred:NAME}), a file (${file:/path}) or an "
    "environment variable (${VAR}), so the config file holds no secret"
)
# Chat services whose webhook URL is itself the credential (a token in its path or query).
_URL_IS_SECRET: Final = frozenset({"slack", "discord", "telegram", "mattermost", "teams"})


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or a literal address) is this machine only."""
    if not host:
        return False  # "" listens on every address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def risky_settings(doc: YamlDocument, substituted: Substituted, config: Config) -> list[Problem]:
    """Every risky setting of the validated ``config`` read from ``doc``."""
    found = _Finder(doc, substituted)
    for index, account in enumerate(config.accounts):
        base_url = config.account_spec(account).base_url
        parts = urlsplit(base_url)
        remote = not is_loopback(parts.hostname)
        path: YamlPath = ("accounts", index)
        if remote and parts.scheme == "http":
            found.warn(
                (*path, "base_url"),
                "base_url uses plain http:// to a host beyond this machine: credentials and "
                "balances cross the network unencrypted; use https://",
                "plain-text transport",
            )
        if remote:
            for key in account.credentials:
                found.literal((*path, "credentials", key), f"credential {key!r}")
    for index, sink in enumerate(config.sinks):
        path = ("sinks", index)
        parts = urlsplit(sink.url.reveal())
        remote = not is_loopback(parts.hostname)
        plain = isinstance(sink, MqttSinkConfig) and parts.scheme == "mqtt"
        if remote and plain and parts.password:
            found.warn(
                (*path, "url"),
                "the MQTT password travels unencrypted over mqtt:// to a host beyond this "
                "machine; use mqtts://",
                "plain-text transport",
            )
        if not remote:
            continue
        if parts.password or (
            isinstance(sink, WebhookSinkConfig) and sink.format in _URL_IS_SECRET
        ):
            what = "the password in the sink URL" if parts.password else "the webhook URL"
            found.literal((*path, "url"), what)
        if isinstance(sink, WebhookSinkConfig):
            if not sink.verify_tls:
                found.warn(
                    (*path, "verify_tls"),
                    "verify_tls: false: the receiver's certificate is not checked, so anyone "
                    "on the network path can read the alerts or answer in its place",
                    "TLS not verified",
                )
            if sink.secret is not None:
                found.literal((*path, "secret"), "the sink's secret")
            for header in sink.headers:
                found.literal((*path, "headers", header), f"header {header!r}")
    if config.http is not None:
        _http(found, config.http)
    if config.state.dsn is not None and dsn_passwords(config.state.dsn.reveal()):
        found.literal(("state", "dsn"), "the password in state.dsn")
    return sorted(found.problems, key=lambda problem: (problem.line, problem.column))


def _http(found: _Finder, http: HttpConfig) -> None:
    if http.token is not None:
        found.literal(("http", "token"), "http.token")
    elif not is_loopback(http.host):
        found.warn(
            ("http", "listen"),
            "http.listen is reachable from other hosts and http.token is not set: anyone who "
            "connects can read every balance from /api/balances; set http.token or listen "
            "on 127.0.0.1",
            "open API",
        )


class _Finder:
    def __init__(self, doc: YamlDocument, substituted: Substituted) -> None:
        self.doc = doc
        self.substituted = substituted
        self.problems: list[Problem] = []

    def warn(self, path: YamlPath, message: str, kind: str) -> None:
        line, column = self.doc.position(path)
        self.problems.append(Problem(self.doc.file, line, column, message, "warning", kind))

    def literal(self, path: YamlPath, what: str) -> None:
        """Warn if the value at ``path`` was written out rather than referenced."""
        if path not in self.substituted.paths:
            self.warn(
                path, f"{what} is written in the config file; {_REFERENCE_HINT}", "secret in file"
            )
