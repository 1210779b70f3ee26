"""Silences: for a while, alerts that match every matcher of one notify no sink.

A silence is made by a person (the CLI or the HTTP API) and kept in the state store, so it
survives restarts and every daemon on that store sees it. It is *active* from ``starts_at``
(inclusive) to ``ends_at`` (exclusive), *pending* before, *expired* after; expiring one early
moves its end to now. Expired silences are kept for :data:`RETENTION` (``silence list --all``
shows them) and then removed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from balwatch.alert import iso_z
from balwatch.matchers import Matcher, MatcherError, matches_all, parse_matcher

RETENTION: Final = 5 * 86_400.0  # as Alertmanager keeps expired silences
MAX_LENGTH: Final = 365 * 86_400.0  # a longer silence is a rule that should be changed
MAX_TEXT: Final = 1000  # author, comment
SilenceState = Literal["pending", "active", "expired"]


class SilenceError(ValueError):
    """A silence that cannot be made; ``key`` names the part at fault (``matchers``, ...)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence; times are unix seconds. Make new ones with :func:`new_silence`."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    author: str
    comment: str
    created_at: float

    def state(self, now: float) -> SilenceState:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, fields: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, fields)

    def expired(self, now: float) -> Silence:
        """This silence ended at ``now`` (one that has not begun ends before it begins)."""
        if self.ends_at <= now:
            return self
        return replace(self, starts_at=min(self.starts_at, now), ends_at=now)

    def to_json(self, now: float) -> dict[str, object]:
        """The silence as the CLI (``--json``) and the HTTP API show it."""
        return {
            "id": self.id,
            "state": self.state(now),
            "matchers": [str(m) for m in self.matchers],
            "starts_at": _iso(self.starts_at),
            "ends_at": _iso(self.ends_at),
            "author": self.author,
            "comment": self.comment,
            "created_at": _iso(self.created_at),
        }

    def to_record(self) -> dict[str, object]:
        """What a state store keeps (:meth:`from_record` reads it back)."""
        return {
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "author": self.author,
            "comment": self.comment,
            "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Silence:
        return cls(
            id=str(data["id"]),
            matchers=tuple(parse_matcher(str(m)) for m in data["matchers"]),
            starts_at=float(data["starts_at"]),
            ends_at=float(data["ends_at"]),
            author=str(data["author"]),
            comment=str(data["comment"]),
            created_at=float(data["created_at"]),
        )


def new_silence(
    matchers: Sequence[str],
    *,
    starts_at: float,
    ends_at: float,
    author: str,
    comment: str,
    now: float,
) -> Silence:
    """A new silence, checked whole: :class:`SilenceError` names the first bad part."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher (--match NAME=VALUE)", "matchers")
    parsed = []
    for text in matchers:
        try:
            parsed.append(parse_matcher(text))
        except MatcherError as exc:
            raise SilenceError(f"matcher {text!r}: {exc.message}", "matchers") from None
    if all(m.matches({}) for m in parsed):
        # `account=~.*` alone would silence everything, including what nobody thought of.
        raise SilenceError(
            "every matcher also matches an empty value, so this silence would mute every "
            "alert; add one that names something (like rule=low-available, or rule=~.+ to "
            "really mute everything)",
            "matchers",
        )
    if ends_at <= starts_at:
        raise SilenceError("a silence must end after it starts", "ends_at")
    if ends_at <= now:
        raise SilenceError("this silence would be over already: it ends in the past", "ends_at")
    if ends_at - starts_at > MAX_LENGTH:
        raise SilenceError("a silence may last at most 365 days", "ends_at")
    for key, text in (("author", author), ("comment", comment)):
        if not text.strip():
            raise SilenceError(f"a silence needs a {key}: who made it and why stay with it", key)
        if len(text) > MAX_TEXT or not text.isprintable():
            raise SilenceError(
                f"{key} must be one line of printable text, at most {MAX_TEXT} characters", key
            )
    return Silence(
        id=uuid.uuid4().hex[:12],
        matchers=tuple(parsed),
        starts_at=starts_at,
        ends_at=ends_at,
        author=author.strip(),
        comment=comment.strip(),
        created_at=now,
    )


def parse_time(text: str, *, zone_required: bool) -> float:
    """Unix seconds of an ISO-8601 time (``2026-11-25T22:00:00Z``, ``...+02:00``).

    Without a zone the time is the machine's local time, unless ``zone_required`` (the
    HTTP API, whose clients may be anywhere): then it is an error.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected an ISO-8601 time like 2026-11-25T22:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        if zone_required:
            raise ValueError(f"expected a time with a zone (Z or +02:00), got {text!r}")
        moment = moment.astimezone()  # the machine's local time
    return moment.timestamp()


def _iso(moment: float) -> str:
    return iso_z(datetime.fromtimestamp(moment, UTC))
