"""Log lines are JSON for journald and never carry a secret, even one echoed back as text."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote_plus

import structlog

from balwatch import logs, redact
from balwatch.secret import Secret

KEY = Secret("sk-live-4f9a8b7c6d5e")


def test_json_lines_mask_secrets_in_any_field() -> None:
    out = io.StringIO()
    redact.install([KEY])
    logs.configure("json", "info", stream=out)
    log = structlog.get_logger("t")
    log.warning("poll_failed", account="a", error=f"server said: bad key {KEY.reveal()}")
    log.info("config", credentials={"api_key": KEY})
    log.info("nested", echoed=[f"key {KEY.reveal()}", {"why": (KEY.reveal(), 1)}])
    try:
        raise ValueError(f"boom {KEY.reveal()}")
    except ValueError:
        log.exception("adapter_bug")
    text = out.getvalue()
    assert KEY.reveal() not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert events[0]["event"] == "poll_failed" and events[0]["level"] == "warning"
    assert events[0]["error"] == "server said: bad key ***"
    assert events[1]["credentials"] == {"api_key": "Secret('***')"}
    assert events[2]["echoed"] == ["key ***", {"why": ["***", 1]}]
    assert "boom ***" in events[3]["exception"]


def test_level_filters_and_console_format() -> None:
    out = io.StringIO()
    logs.configure("console", "warning", stream=out)
    log = structlog.get_logger("t")
    log.info("hidden")
    log.warning("shown", account="a")
    text = out.getvalue()
    assert "hidden" not in text and "shown" in text and "account" in text
    assert not text.lstrip().startswith("{")


def test_console_lines_show_control_characters_instead_of_obeying_them() -> None:
    """An exchange's text (an error quoting its answer) must not drive the terminal."""
    out = io.StringIO()
    logs.configure("console", "info", stream=out)
    log = structlog.get_logger("t")
    log.warning("poll_failed", error="\x1b]0;owned\x07\x1b[2J", fake="line\n2025 fake event")
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2J" in text
    assert text.count("\n") == 1  # a line break in a field does not start a forged line


def test_json_lines_mask_a_secret_echoed_in_any_encoding() -> None:
    out = io.StringIO()
    password = 'p\u00e4ss "w" 0rd'
    redact.install([Secret(password)])
    logs.configure("json", "info", stream=out)
    log = structlog.get_logger("t")
    log.warning("poll_failed", error=f"HTTP 400: {json.dumps(password)}")
    log.warning("poll_failed", error=f"HTTP 400: {quote_plus(password)}")
    errors = [json.loads(line)["error"] for line in out.getvalue().splitlines()]
    assert errors == ['HTTP 400: "***"', "HTTP 400: ***"]


def test_a_library_logging_through_the_standard_library_gets_json_lines_masked() -> None:
    out = io.StringIO()
    redact.install([KEY])
    logs.configure("json", "info", stream=out)
    logging.getLogger("somelib").warning("connect to %s failed", f"db?password={KEY.reveal()}")
    logging.getLogger("somelib").info("chatter below warning")
    # psycopg's pool warns at every reconnection of an outage: only its errors show.
    logging.getLogger("psycopg.pool").warning("error connecting in 'balwatch-a'")
    logging.getLogger("psycopg.pool").error("pool 'balwatch-a' is broken")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["logger"], e["message"]) for e in events] == [
        ("library_log", "warning", "somelib", "connect to db?password=*** failed"),
        ("library_log", "error", "psycopg.pool", "pool 'balwatch-a' is broken"),
    ]
