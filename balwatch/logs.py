"""structlog set-up: JSON lines for journald, a readable console on a terminal.

Secrets are masked twice: :class:`~balwatch.secret.Secret` never prints its value, and the
``redact`` processor passes every field through the installed
:class:`~balwatch.redact.Redactor`, which masks any configured secret that reached a log
field as text, in any form (a server echoing a key back, say). On the console, control
characters in fields are escaped: text from an exchange must not drive the terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from balwatch import redact, terminal

LogFormat = Literal["json", "console", "auto"]

log = structlog.get_logger("balwatch.library")


class _LibraryRecords(logging.Handler):
    """Warnings and errors that libraries log through the standard library (psycopg's pool:
    a connection that failed) as ``library_log`` events: JSON lines like every other, through
    the same redactor, instead of Python's bare fallback to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not end the caller
            message = str(record.msg)
        (log.error if record.levelno >= logging.ERROR else log.warning)(
            "library_log", logger=record.name, message=message
        )


_LIBRARY_RECORDS = _LibraryRecords(logging.WARNING)


def _redact(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    redactor = redact.installed()
    if redactor:
        for key, value in event_dict.items():
            event_dict[key] = redactor.value(value)
    return event_dict


def _escape_controls(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # The console renderer prints strings as they are (other values by repr, escaped). A
    # traceback keeps its line breaks; any other field is kept on its line.
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = terminal.escape(value, keep="\n" if key == "exception" else "")
    return event_dict


def configure(fmt: LogFormat = "auto", level: str = "info", *, stream: Any = None) -> None:
    """Log to ``stream`` (stderr). Secrets are those of :func:`balwatch.redact.install`."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: list[structlog.types.Processor] = (
        [_escape_controls, structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        if fmt == "console"
        else [structlog.processors.JSONRenderer()]  # JSON escapes control characters
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            *renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _LIBRARY_RECORDS not in root.handlers:
        root.addHandler(_LIBRARY_RECORDS)
    root.setLevel(logging.WARNING)
    # The pool warns at every failed reconnection, each second of a database outage; the
    # store and the cluster say it once (cluster_store_unreachable). Its errors still show.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
