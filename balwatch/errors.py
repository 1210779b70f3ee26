"""Typed errors: what went wrong with a source, or with a file a user wrote.

Every :class:`SourceError` names the source (adapter name) and, where it applies, the
asset and field, so an operator can tell what broke without reading a traceback.
Messages never carry credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ErrorKind(StrEnum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    BAD_RESPONSE = "bad_response"


class SourceError(Exception):
    """A poll of one source failed. Subclasses say how; ``kind`` is the metric label."""

    kind: ErrorKind

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


class AuthError(SourceError):
    """Credentials rejected. Never retried fast: repeated failures can lock the key."""

    kind = ErrorKind.AUTH


class RateLimited(SourceError):
    """The source throttled us; ``retry_after`` (seconds) when it said how long."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(self, source: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(source, message)
        self.retry_after = retry_after


class SourceUnavailable(SourceError):
    """Timeouts, connection failures, 5xx, CoinAPI 490: worth retrying with backoff."""

    kind = ErrorKind.UNAVAILABLE


class BadResponse(SourceError):
    """The answer's shape or a value is wrong. Names the asset and field when known."""

    kind = ErrorKind.BAD_RESPONSE

    def __init__(
        self, source: str, message: str, *, asset: str | None = None, field: str | None = None
    ) -> None:
        where = ", ".join(
            part
            for part in (f"asset {asset}" if asset else "", f"field {field}" if field else "")
            if part
        )
        super().__init__(source, f"{message} ({where})" if where else message)
        self.asset = asset
        self.field = field


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in a file a user edits, with the position an editor can jump to."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"
    # What sort of problem, in a few fixed words ("invalid YAML", "unknown key"): never text
    # of the file, so it may go where the message may not (a config_error alert). Not part
    # of a problem's identity: the same message at the same place is the same problem.
    kind: str = field(default="invalid value", compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"

    def located_kind(self) -> str:
        """``FILE:LINE:COL: kind``: where and what sort, quoting nothing of the file."""
        return f"{self.file}:{self.line}:{self.column}: {self.kind}"


class ConfigError(Exception):
    """A config or rule file is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
