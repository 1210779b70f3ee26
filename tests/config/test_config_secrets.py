"""Secret values, from the environment or from files, never show up in output."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.config import load_config
from balwatch.errors import ConfigError

WriteFile = Callable[..., Path]

ENV_SECRET = "env-secret-value-1234"
FILE_SECRET = "file-secret-value-5678"
SECRETS = (ENV_SECRET, FILE_SECRET)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "secret").write_text(FILE_SECRET + "\n")
    (creds / "url").write_text(f"https://hooks.example/{FILE_SECRET}\n")
    return {
        "CREDENTIALS_DIRECTORY": str(creds),
        "SECRET": ENV_SECRET,
        "MQTT_URL": f"mqtts://user:{ENV_SECRET}@broker:8883",
    }


def assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_valid_config_never_shows_secrets(write: WriteFile, environ: dict[str, str]) -> None:
    path = write(
        """
        accounts:
          - name: t
            exchange: bitso
            credentials:
              api_key: ${SECRET}
              api_secret: ${cred:secret}
        sinks:
          - {name: m, type: mqtt, url: "${MQTT_URL}"}
          - name: w
            type: webhook
            url: ${cred:url}
            secret: ${cred:secret}
            headers: {Authorization: "Bearer ${SECRET}"}
        """
    )
    config = load_config(path, environ)
    shown = [str(config), repr(config), config.model_dump_json(), str(config.model_dump())]
    shown += [repr(config.account_spec(account)) for account in config.accounts]
    for text in shown:
        assert_hidden(text)
    # URLs contribute their secret parts (password; path with the token), so the log
    # redactor masks those and leaves scheme and host readable.
    assert {secret.reveal() for secret in config.secrets()} == {
        ENV_SECRET,
        FILE_SECRET,
        f"/{FILE_SECRET}",
        f"Bearer {ENV_SECRET}",
    }


def test_errors_never_show_secrets(write: WriteFile, environ: dict[str, str]) -> None:
    # Each secret lands somewhere that fails validation, so pydantic sees it as input.
    path = write(
        """
        defaults: {timeout: "${SECRET}", poll_interval: "${cred:secret}"}
        log: {format: "${SECRET}", level: "${cred:secret}"}
        accounts:
          - name: "${SECRET}"
            exchange: "${cred:secret}"
          - name: t
            exchange: kunacore
            base_url: "https://${SECRET}"
            credentials: {api_key: "${SECRET}", login: "${cred:secret}", other: "${SECRET}"}
            labels: {desk: ["${SECRET}"]}
        sinks:
          - {name: m, type: mqtt, url: "${SECRET}", topic_prefix: "${cred:secret}/"}
          - {name: w, type: webhook, url: "ftp://${cred:secret}", format: "${SECRET}"}
          - {name: x, type: "${SECRET}"}
        http: {listen: "${cred:secret}"}
        """
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    error = caught.value
    assert len(error.problems) >= 12
    assert error.__context__ is None and error.__cause__ is None
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts += [str(problem) for problem in error.problems]
    texts += [repr(problem) for problem in error.problems]
    for text in texts:
        assert_hidden(text)


def test_yaml_errors_never_show_substituted_values(write: WriteFile) -> None:
    path = write('a: "${SECRET}"\na: 2\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"SECRET": ENV_SECRET})
    assert_hidden(str(caught.value))


def test_a_chat_url_gives_the_redactor_its_token_alone_too(write: WriteFile) -> None:
    """A service may quote just the token of its webhook URL (Slack's last segment, the
    secret half of Telegram's ``bot<id>:<secret>``); short path words are no secret."""
    slack_token = "gT4x9QmZk2Lw8RbN5vYc3HdJ"
    bot_key = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    path = write(
        f"""
        sinks:
          - name: slack
            type: webhook
            format: slack
            url: https://hooks.slack.com/services/T00000000/B00000000/{slack_token}
          - name: telegram
            type: webhook
            format: telegram
            url: https://api.telegram.org/bot123456789:{bot_key}/sendMessage
            chat_id: "-1001234567890"
        """
    )
    secrets = {secret.reveal() for secret in load_config(path, {}).secrets()}
    assert {slack_token, bot_key, f"bot123456789:{bot_key}"} <= secrets
    assert not {"services", "sendMessage", "T00000000", "bot123456789"} & secrets
