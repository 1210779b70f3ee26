from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.adapters.coinapi import CoinApiOptions
from balwatch.adapters.kunacore import KunaCoreOptions
from balwatch.config import Config, MqttSinkConfig, WebhookSinkConfig, load_config, redact_url
from balwatch.errors import ConfigError, Problem
from balwatch.secret import Secret
from balwatch.sink import Grouping

WriteFile = Callable[..., Path]

# The product's example config, verbatim.
DESIGN_EXAMPLE = """
state_dir: /var/lib/balwatch        # SQLite: alert state, history, outbox. Default: $STATE_DIRECTORY or ./.balwatch
rules: [rules/*.yaml]               # globs, relative to this file
http: {listen: "127.0.0.1:9464"}    # /healthz /metrics /api/alerts /api/balances; omit to disable
log: {format: json, level: info}    # json for journald, console for a terminal
defaults: {poll_interval: 30s, timeout: 10s}

accounts:
  - name: bitso-treasury            # unique; [A-Za-z0-9_.-]+
    exchange: bitso                 # coinapi | bitso | kunacore | coinw
    base_url: https://api.bitso.com # optional: default is the production URL
    poll_interval: 15s
    credentials:
      api_key: ${BITSO_KEY}                 # environment variable
      api_secret: ${cred:bitso_secret}      # file in $CREDENTIALS_DIRECTORY (systemd LoadCredential)
      # ${file:/path} reads a file; a missing variable or file is a config error that names it
    # credentials keys: api_key (all); api_secret (bitso, coinw);
    # kunacore JWT instead of api_key: merchant_id, login, password
    options: {}                     # per adapter: coinapi exchange_id; kunacore wallet_id, assets; ...
    labels: {desk: treasury}

sinks:
  - name: ops-mqtt
    type: mqtt
    url: mqtts://user:${MQTT_PASSWORD}@broker.example:8883   # mqtt:// or mqtts://
    topic_prefix: balwatch
    qos: 1
  - name: ops-slack
    type: webhook
    format: slack                   # generic | slack | discord | telegram | mattermost | teams
    url: ${SLACK_WEBHOOK_URL}
    min_severity: warning
  - name: audit
    type: webhook
    format: generic
    url: https://audit.example/hooks/balwatch
    secret: ${cred:webhook_secret}  # HMAC signature header
"""  # noqa: E501

SECRETS = {
    "BITSO_KEY": "env-bitso-key-1111",
    "MQTT_PASSWORD": "env-mqtt-pass-2222",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/env-slack-3333",
}
FILE_SECRETS = {"bitso_secret": "file-bitso-secret-4444", "webhook_secret": "file-hmac-5555"}


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in FILE_SECRETS.items():
        (creds / name).write_text(value + "\n")
    return {**SECRETS, "CREDENTIALS_DIRECTORY": str(creds)}


def problems(path: Path, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.problems


def test_design_example_loads(write: WriteFile, environ: dict[str, str], tmp_path: Path) -> None:
    config = load_config(write(DESIGN_EXAMPLE), environ)

    assert config.state_dir == Path("/var/lib/balwatch")
    assert config.rules == (f"{tmp_path}/rules/*.yaml",)
    assert config.http is not None
    assert (config.http.host, config.http.port) == ("127.0.0.1", 9464)
    assert (config.log.format, config.log.level) == ("json", "info")
    assert config.metrics.balances is True  # balances on /metrics unless turned off

    [account] = config.accounts
    assert account.poll_interval == 15.0
    assert account.labels == {"desk": "treasury"}
    spec = config.account_spec(account)
    assert spec.base_url == "https://api.bitso.com"
    assert spec.timeout == 10.0
    assert {k: v.reveal() for k, v in spec.credentials.items()} == {
        "api_key": "env-bitso-key-1111",
        "api_secret": "file-bitso-secret-4444",
    }
    assert config.poll_interval(account) == 15.0

    mqtt, slack, audit = config.sinks
    assert isinstance(mqtt, MqttSinkConfig)
    assert mqtt.url.reveal() == "mqtts://user:env-mqtt-pass-2222@broker.example:8883"
    assert (mqtt.qos, mqtt.protocol, mqtt.keepalive, mqtt.send_resolved) == (1, "5", 30.0, True)
    assert isinstance(slack, WebhookSinkConfig)
    assert (slack.format, slack.min_severity, slack.timeout) == ("slack", "warning", 10.0)
    assert isinstance(audit, WebhookSinkConfig)
    assert audit.secret == Secret("file-hmac-5555")


def test_defaults_apply(write: WriteFile, tmp_path: Path) -> None:
    config = load_config(
        write(
            """
            defaults: {timeout: 5s}
            accounts:
              - name: gw
                exchange: coinapi
                base_url: https://gw.internal/
                options: {exchange_id: BINANCE}
              - name: kuna
                exchange: kunacore
                base_url: https://kuna.example
                credentials: {merchant_id: "42", login: ops, password: pw}
                options: {assets: [USDT]}
                timeout: 2s
            """
        ),
        {},
    )
    assert config.state_dir == tmp_path / ".balwatch"
    assert config.rules == (f"{tmp_path}/rules/*.yaml",)
    assert config.http is None
    assert config.log.format == "auto"
    gw, kuna = config.accounts
    assert config.poll_interval(gw) == 30.0
    gw_spec = config.account_spec(gw)
    assert (gw_spec.base_url, gw_spec.timeout, dict(gw_spec.credentials)) == (
        "https://gw.internal",
        5.0,
        {},
    )
    assert gw_spec.options == CoinApiOptions(exchange_id="BINANCE")
    assert config.account_spec(kuna).timeout == 2.0
    assert kuna.options == KunaCoreOptions(assets=["USDT"])
    # Answers are capped at 8 MiB unless an account or the defaults say otherwise.
    assert gw_spec.max_response_size == config.account_spec(kuna).max_response_size == 8 << 20


def test_response_size_cap_per_account_or_default(write: WriteFile) -> None:
    config = load_config(
        write(
            """
            defaults: {max_response_size: 512KiB}
            accounts:
              - {name: a, exchange: coinapi, base_url: "https://gw", max_response_size: 32MiB}
              - {name: b, exchange: coinapi, base_url: "https://gw", max_response_size: 65536}
              - {name: c, exchange: coinapi, base_url: "https://gw"}
            """
        ),
        {},
    )
    caps = [config.account_spec(a).max_response_size for a in config.accounts]
    assert caps == [32 << 20, 65536, 512 << 10]


def test_instance_and_external_url(write: WriteFile) -> None:
    default = load_config(write("{}\n"), {})
    assert default.instance == socket.gethostname()
    assert (default.external_url, default.sinks) == (None, ())
    config = load_config(
        write(
            """
            instance: treasury-prod
            external_url: https://ops.example/balwatch/
            sinks:
              - {name: m, type: mqtt, url: 'mqtt://b', active_expiry: 30d}
              - {name: n, type: mqtt, url: 'mqtt://b'}
            """
        ),
        {},
    )
    assert (config.instance, config.external_url) == (
        "treasury-prod",
        "https://ops.example/balwatch",
    )
    expiring, lasting = config.sinks
    assert isinstance(expiring, MqttSinkConfig) and isinstance(lasting, MqttSinkConfig)
    assert (expiring.active_expiry, lasting.active_expiry) == (30 * 86400, None)


def test_state_directory_from_systemd(write: WriteFile) -> None:
    config = load_config(write("{}\n"), {"STATE_DIRECTORY": "/var/lib/balwatch:/var/lib/other"})
    assert config.state_dir == Path("/var/lib/balwatch")


def test_relative_paths_start_at_the_config_file(write: WriteFile, tmp_path: Path) -> None:
    write("ca", "etc/ca.pem")
    config = load_config(
        write(
            """
            state_dir: state
            rules: [more/*.yaml, /abs/*.yaml]
            sinks:
              - {name: m, type: mqtt, url: "mqtt://broker", ca_file: ca.pem, protocol: 3.1.1}
            """,
            "etc/balwatch.yaml",
        ),
        {},
    )
    assert config.state_dir == tmp_path / "etc" / "state"
    assert config.rules == (f"{tmp_path}/etc/more/*.yaml", "/abs/*.yaml")
    [sink] = config.sinks
    assert isinstance(sink, MqttSinkConfig)
    assert sink.ca_file == tmp_path / "etc" / "ca.pem"
    assert sink.protocol == "3.1.1"


def test_numbers_where_text_is_meant(write: WriteFile) -> None:
    config = load_config(
        write(
            """
            sinks:
              - {name: m, type: mqtt, url: "mqtt://b", protocol: 5}
              - {name: t, type: webhook, format: telegram, url: "https://t", chat_id: -1001}
            """
        ),
        {},
    )
    mqtt, telegram = config.sinks
    assert isinstance(mqtt, MqttSinkConfig) and mqtt.protocol == "5"
    assert isinstance(telegram, WebhookSinkConfig) and telegram.chat_id == "-1001"


def test_chat_sinks_group_by_default_and_other_sinks_only_when_asked(write: WriteFile) -> None:
    config = load_config(
        write(
            """
            sinks:
              - {name: slack, type: webhook, format: slack, url: "https://s"}
              - {name: alone, type: webhook, format: discord, url: "https://d", group_by: [...]}
              - {name: all, type: webhook, format: mattermost, url: "https://m", group_by: []}
              - name: tg
                type: webhook
                format: telegram
                url: "https://t"
                chat_id: -1001
                group_by: [account, desk]
                group_wait: 0s
                group_interval: 1h
                message_thread_id: 7
                disable_notification: [info]
              - {name: audit, type: webhook, url: "https://a"}
              - {name: audit-groups, type: webhook, url: "https://a", group_wait: 10s}
            """
        ),
        {},
    )
    sinks = [s for s in config.sinks if isinstance(s, WebhookSinkConfig)]
    assert [s.grouping for s in sinks] == [
        Grouping(("rule",), 30.0, 300.0),
        None,  # [...]: every alert its own message
        Grouping((), 30.0, 300.0),  # []: one group for all
        Grouping(("account", "desk"), 0.0, 3600.0),
        None,  # generic: per alert unless asked
        Grouping(("rule",), 10.0, 300.0),
    ]
    assert (sinks[3].message_thread_id, sinks[3].quiet) == (7, frozenset({"info"}))
    assert sinks[0].quiet == frozenset({"info", "resolved"})


def test_redact_url() -> None:
    assert redact_url(Secret("mqtts://user:pw@broker.example:8883/x?y")) == (
        "mqtts://broker.example:8883/"
    )
    assert redact_url(Secret("https://hooks.slack.com/services/T/B/XYZ")) == (
        "https://hooks.slack.com/"
    )
    assert redact_url(Secret("mqtt://[::1]:1883")) == "mqtt://[::1]:1883/"


VALID_ACCOUNT = """
accounts:
  - name: treasury
    exchange: bitso
    credentials: {api_key: k, api_secret: s}
"""

# (file text, line, column, message or its start)
ERROR_CASES = {
    "unknown top-level key": (
        "accounts: []\nstate_dri: /tmp\n",
        2,
        1,
        "unknown key 'state_dri' in the config (did you mean 'state_dir'?); expected one of: "
        "state_dir, instance, external_url, rules, http, log, metrics, defaults, accounts, sinks",
    ),
    "unknown account key": (
        VALID_ACCOUNT + "    poll_intervall: 15s\n",
        5,
        5,
        "unknown key 'poll_intervall' in account (did you mean 'poll_interval'?); "
        "expected one of: name, exchange, base_url, poll_interval, timeout, max_response_size, ",
    ),
    "typo'd exchange": (
        VALID_ACCOUNT.replace("bitso", "bitsoo"),
        3,
        15,
        "exchange 'bitsoo' is not supported; expected one of: bitso, ccxt, coinapi, coinw, "
        "kunacore",
    ),
    "missing base_url for coinapi": (
        "accounts:\n  - name: gw\n    exchange: coinapi\n",
        2,
        5,
        "missing required key 'base_url' in account: coinapi has no default URL",
    ),
    "wrong credential set": (
        VALID_ACCOUNT.replace("api_secret: s", "login: s"),
        4,
        31,
        "unknown credential 'login' for bitso; expected one of: {api_key, api_secret}",
    ),
    "incomplete credential set": (
        "accounts:\n  - name: k\n    exchange: kunacore\n    base_url: https://k\n"
        "    credentials:\n      login: l\n",
        6,
        7,
        "credentials for kunacore must be one of: {api_key} or {login, merchant_id, password}; "
        "got {login}",
    ),
    "missing credentials": (
        "accounts:\n  - name: t\n    exchange: coinw\n",
        2,
        5,
        "credentials for coinw must be one of: {api_key, api_secret}; got none",
    ),
    "bad duration": (
        VALID_ACCOUNT + "    poll_interval: 30 seconds\n",
        5,
        20,
        "expected a duration like 500ms, 30s, 5m, 2h or 1d, got '30 seconds'",
    ),
    "size in the wrong unit": (
        VALID_ACCOUNT + "    max_response_size: 8MB\n",
        5,
        24,
        "expected a size from 1KiB to 1GiB, like 512KiB or 8MiB, got '8MB'",
    ),
    "size too small to hold an error": (
        "defaults: {max_response_size: 100}\n",
        1,
        31,
        "expected a size from 1KiB to 1GiB, like 512KiB or 8MiB, got 100",
    ),
    "size beyond any cap": (
        "defaults: {max_response_size: 2GiB}\n",
        1,
        31,
        "expected a size from 1KiB to 1GiB, like 512KiB or 8MiB, got '2GiB'",
    ),
    "bare number duration": (
        "defaults: {timeout: 30}\n",
        1,
        21,
        "expected a duration with a unit, like 30s, got 30",
    ),
    "duplicate account name": (
        VALID_ACCOUNT + VALID_ACCOUNT.removeprefix("\naccounts:\n"),
        5,
        11,
        "duplicate account name 'treasury'; names must be unique",
    ),
    "duplicate sink name": (
        "sinks:\n  - {name: a, type: mqtt, url: 'mqtt://b'}\n"
        "  - {name: a, type: webhook, url: 'https://h'}\n",
        3,
        12,
        "duplicate sink name 'a'; names must be unique",
    ),
    "duplicate yaml key": (
        VALID_ACCOUNT + "    name: other\n",
        5,
        5,
        "duplicate key 'name' (first defined at line 2)",
    ),
    "tab indentation": (
        "log:\n\tformat: json\n",
        2,
        1,
        "tab character in indentation; YAML needs spaces",
    ),
    "bad indentation": (
        VALID_ACCOUNT + "   labels: {a: b}\n",
        5,
        4,
        "bad indentation: this line does not line up with the block started at line 2",
    ),
    "wrong type": (
        VALID_ACCOUNT + "    labels: [desk]\n",
        5,
        13,
        "expected a mapping (key: value), got a list",
    ),
    "number for a string": (
        VALID_ACCOUNT + "    labels: {desk: 5}\n",
        5,
        20,
        "expected a string, got 5; quote it to keep it as text",
    ),
    "number for a key": (
        VALID_ACCOUNT + "    labels: {5: desk}\n",
        5,
        14,
        "expected a text key, got 5; quote it to keep it as text",
    ),
    "unknown option": (
        "accounts:\n  - name: k\n    exchange: kunacore\n    base_url: https://k\n"
        "    credentials: {api_key: x}\n    options: {wallet: w}\n",
        6,
        15,
        "unknown key 'wallet' in options for kunacore (did you mean 'wallet_id'?); "
        "expected one of: wallet_id, assets",
    ),
    "bad option value": (
        "accounts:\n  - name: k\n    exchange: kunacore\n    base_url: https://k\n"
        "    credentials: {api_key: x}\n    options: {assets: USDT}\n",
        6,
        23,
        "expected a list, got a string",
    ),
    "bad account name": (
        VALID_ACCOUNT.replace("treasury", "my treasury"),
        2,
        11,
        "expected a name of letters, digits, '_', '.' and '-', got 'my treasury'",
    ),
    "missing account key": (
        "accounts:\n  - name: a\n",
        2,
        5,
        "missing required key 'exchange' in account",
    ),
    "bad enum": (
        "log: {format: jsn}\n",
        1,
        15,
        "expected 'auto', 'json' or 'console', got 'jsn'",
    ),
    "bad metrics switch": (
        "metrics: {balances: sometimes}\n",
        1,
        21,
        "expected true or false, got 'sometimes'",
    ),
    "unknown metrics key": (
        "metrics: {balance: false}\n",
        1,
        11,
        "unknown key 'balance' in metrics",
    ),
    "bad listen": (
        "http: {listen: 9464}\n",
        1,
        16,
        "expected a string, got 9464",
    ),
    "bad qos": (
        "sinks:\n  - {name: m, type: mqtt, url: 'mqtt://b', qos: 3}\n",
        2,
        49,
        "expected 0, 1 or 2, got 3",
    ),
    "unknown sink type": (
        "sinks:\n  - name: m\n    type: mqt\n",
        3,
        11,
        "expected sink type mqtt or webhook, got 'mqt'",
    ),
    "sink without type": (
        "sinks:\n  - name: m\n",
        2,
        5,
        "missing required key 'type' in sink; expected one of: mqtt, webhook",
    ),
    "unknown sink key": (
        "sinks:\n  - {name: m, type: mqtt, url: 'mqtt://b', qoss: 1}\n",
        2,
        44,
        "unknown key 'qoss' in mqtt sink (did you mean 'qos'?)",
    ),
    "wrong sink url scheme": (
        "sinks:\n  - {name: w, type: webhook, url: 'ftp://x'}\n",
        2,
        35,
        "expected a URL with a host, starting with https:// or http://",
    ),
    "telegram without chat_id": (
        "sinks:\n  - {name: w, type: webhook, format: telegram, url: 'https://x'}\n",
        2,
        5,
        "missing required key 'chat_id' in sink: format telegram needs it",
    ),
    "mention on a format that has none": (
        "sinks:\n  - {name: t, type: webhook, format: teams, url: 'https://x',\n"
        "     mention: {critical: '@here'}}\n",
        3,
        15,
        "mention is for formats slack, mattermost and discord, not teams",
    ),
    "slack mention that is not Slack's": (
        "sinks:\n  - name: s\n    type: webhook\n    format: slack\n    url: https://x\n"
        "    mention: {warning: '<!here>', critical: '@here'}\n",
        6,
        45,
        "expected <!here>, <!channel>, <!everyone>, <@U...> or <!subteam^ID> for format "
        "slack, got '@here'",
    ),
    "discord mention that is not a role": (
        "sinks:\n  - {name: d, type: webhook, format: discord, url: 'https://x',\n"
        "     mention: {critical: '@everyone'}}\n",
        3,
        26,
        "expected a role id, such as 123456789012345678 for format discord, got '@everyone'",
    ),
    "no grouping listed with fields": (
        "sinks:\n  - {name: s, type: webhook, format: slack, url: 'https://x',\n"
        "     group_by: [rule, '...']}\n",
        3,
        16,
        "'...' means no grouping: list it alone, or list fields without it",
    ),
    "group field that is no name": (
        "sinks:\n  - {name: s, type: webhook, format: slack, url: 'https://x',\n"
        "     group_by: [rule, 'team name']}\n",
        3,
        23,
        "expected an alert field (rule, severity, account, exchange, venue, asset, "
        "instance, group) or a label name, or ..., got 'team name'",
    ),
    "group_wait beyond its bound": (
        "sinks:\n  - {name: s, type: webhook, format: slack, url: 'https://x', group_wait: 2h}\n",
        2,
        75,
        "expected a duration from 0s to 1h, got '2h'",
    ),
    "group_interval without grouping": (
        "sinks:\n  - {name: s, type: webhook, format: slack, url: 'https://x',\n"
        "     group_by: ['...'], group_interval: 1m}\n",
        3,
        41,
        "group_interval has no effect with group_by [...] (no grouping)",
    ),
    "topic on a format other than telegram": (
        "sinks:\n  - {name: s, type: webhook, format: slack, url: 'https://x',\n"
        "     message_thread_id: 7}\n",
        3,
        25,
        "message_thread_id is only used by format telegram, not slack",
    ),
    "quiet kind that is not one": (
        "sinks:\n  - {name: t, type: webhook, format: telegram, url: 'https://x', chat_id: 1,\n"
        "     disable_notification: [info, repeat]}\n",
        3,
        35,
        "expected 'info', 'warning', 'critical' or 'resolved', got 'repeat'",
    ),
    "missing env var": (
        "accounts:\n  - name: t\n    exchange: coinw\n    credentials:\n"
        "      api_key: ${BITSO_KEY}\n      api_secret: s\n",
        5,
        16,
        "environment variable BITSO_KEY is not set (used as ${BITSO_KEY})",
    ),
    "unquoted reference in a flow mapping": (
        VALID_ACCOUNT.replace("api_key: k", "api_key: ${BITSO_KEY}"),
        4,
        29,
        "unexpected '{' in the { } or [ ] started at line 4; quote a value that contains ${...}",
    ),
    "missing cred file": (
        VALID_ACCOUNT.replace("api_secret: s", "api_secret: '${cred:bitso}'"),
        4,
        43,
        "cannot read /nonexistent/bitso for ${cred:bitso}: No such file or directory",
    ),
    "active_expiry on MQTT 3.1.1": (
        "sinks:\n  - {name: m, type: mqtt, url: 'mqtt://b', protocol: '3.1.1',\n"
        "     active_expiry: 30d}\n",
        3,
        21,
        "active_expiry needs protocol 5: MQTT 3.1.1 has no message expiry",
    ),
    "active_expiry past MQTT's limit": (
        "sinks:\n  - {name: m, type: mqtt, url: 'mqtt://b', active_expiry: 50000d}\n",
        2,
        59,
        "expected a duration from 1s to 4294967295s, got '50000d'",
    ),
    "external_url without a host": (
        "external_url: /balwatch\n",
        1,
        15,
        "expected a URL with a host, starting with https:// or http://",
    ),
    "external_url with a query": (
        "external_url: 'https://ops.example/?x=1'\n",
        1,
        15,
        "expected a base URL without '?' or '#', got 'https://ops.example/?x=1'",
    ),
    "blank instance": ("instance: ' '\n", 1, 11, "expected a name of printable characters"),
    "empty file": ("", 1, 1, "expected a mapping (key: value), got an empty value"),
    "string where a mapping belongs is not quoted": (
        "sinks:\n  - name: w\n    type: webhook\n    url: https://h\n"
        "    headers: 'Authorization: Bearer plaintext'\n",
        5,
        14,
        "expected a mapping (key: value), got a string",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_names_file_line_column_and_expectation(write: WriteFile, case: str) -> None:
    text, line, column, message = ERROR_CASES[case]
    path = write(text)
    [problem] = problems(path, {"CREDENTIALS_DIRECTORY": "/nonexistent"})
    assert (problem.file, problem.line, problem.column) == (str(path), line, column)
    assert problem.message.startswith(message)


def test_all_problems_are_reported_together_in_file_order(write: WriteFile) -> None:
    path = write(
        """
        log: {level: loud}
        colour: red
        accounts:
          - name: a
            exchange: bitsoo
          - name: b
            exchange: coinw
            credentials: {api_key: "${NOPE}", api_secret: s}
            timeout: soon
        sinks:
          - {name: m, type: mqtt, url: 'mqtt://b', qos: 3}
        """
    )
    found = problems(path)
    assert [(p.line, p.column) for p in found] == [
        (1, 14),
        (2, 1),
        (5, 15),
        (8, 28),
        (9, 14),
        (11, 49),
    ]
    assert str(ConfigError(found)).splitlines()[0] == (
        f"{path}:1:14: error: expected 'debug', 'info', 'warning' or 'error', got 'loud'"
    )


def test_substituted_value_is_shown_as_written_not_as_resolved(write: WriteFile) -> None:
    path = write("defaults: {timeout: '${TMO}'}\nlog: {format: '${FMT}'}\n")
    found = problems(path, {"TMO": "ten-seconds-value", "FMT": "fancy-format-value"})
    assert [p.message for p in found] == [
        "expected a duration like 500ms, 30s, 5m, 2h or 1d, got '${TMO}' (after substitution)",
        "expected 'auto', 'json' or 'console', got '${FMT}' (after substitution)",
    ]


def test_a_failed_reference_is_reported_once(write: WriteFile) -> None:
    found = problems(write("sinks:\n  - {name: m, type: mqtt, url: '${MQTT_URL}'}\n"))
    assert [p.message for p in found] == [
        "environment variable MQTT_URL is not set (used as ${MQTT_URL})"
    ]


def test_model_validates_without_the_loader() -> None:
    config = Config.model_validate({"sinks": [{"name": "m", "type": "mqtt", "url": "mqtt://b"}]})
    assert config.sinks[0].url == Secret("mqtt://b")


def test_numbers_from_variables_and_numbers_where_text_is_expected(write: WriteFile) -> None:
    """${VAR} always gives text, and YAML reads `protocol: 5` or a chat id as numbers: each
    field takes what a person writes, and the JSON Schema editors use says the same."""
    path = write(
        """
        sinks:
          - {name: m, type: mqtt, url: 'mqtt://b', qos: '${QOS}', protocol: 5}
          - {name: t, type: webhook, format: telegram, url: 'https://t/bot', chat_id: -1001234}
        """
    )
    config = load_config(path, environ={"QOS": "2"})
    mqtt, telegram = config.sinks
    assert isinstance(mqtt, MqttSinkConfig) and (mqtt.qos, mqtt.protocol) == (2, "5")
    assert isinstance(telegram, WebhookSinkConfig) and telegram.chat_id == "-1001234"
    schema = Config.model_json_schema()["$defs"]
    assert {"type": "integer"} in schema["WebhookSinkConfig"]["properties"]["chat_id"]["anyOf"]
    assert 5 in schema["MqttSinkConfig"]["properties"]["protocol"]["enum"]
    [wrong] = problems(path, {"QOS": "7"})
    assert (wrong.line, wrong.message) == (
        2,
        "expected 0, 1 or 2, got '${QOS}' (after substitution)",
    )


def test_a_key_that_is_not_text_is_reported_at_the_key(write: WriteFile) -> None:
    path = write(
        """
        accounts:
          - name: a
            exchange: coinw
            credentials: {api_key: k, api_secret: s}
            labels:
              desk: treasury
              ~: x
              7: y
        log:
          format: json
          on: debug
        """
    )
    assert [(p.line, p.column, p.message) for p in problems(path)] == [
        (7, 7, "expected a text key, got an empty value; quote it to keep it as text"),
        (8, 7, "expected a text key, got 7; quote it to keep it as text"),
        (
            11,
            3,
            "expected a text key, got true (YAML reads on, off, yes and no as booleans);"
            " quote it to keep it as text",
        ),
    ]
