"""structlog set-up: JSON lines for journald, a readable console on a terminal.

Secrets are masked twice: :class:`~balwatch.secret.Secret` never prints its value, and the
``redact`` processor replaces any known secret value that reached a log field as text
(from a server echoing a key back, say).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

from balwatch.secret import Secret

LogFormat = Literal["json", "console", "auto"]


def make_redactor(secrets: Iterable[Secret]) -> structlog.types.Processor:
    # Longest first, so a secret that contains another is masked whole.
    values = sorted({s.reveal() for s in secrets if len(s.reveal()) >= 4}, key=len, reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, BaseException):
            value = str(value)
        if isinstance(value, str):
            for secret in values:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        # Text inside a field's list or mapping (`items=[...]`) is scrubbed too.
        if isinstance(value, list | tuple):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {scrub(key): scrub(item) for key, item in value.items()}
        return value

    def redact(
        logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if values:
            for key, value in event_dict.items():
                event_dict[key] = scrub(value)
        return event_dict

    return redact


def configure(
    fmt: LogFormat = "auto",
    level: str = "info",
    secrets: Iterable[Secret] = (),
    stream: Any = None,
) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            make_redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
