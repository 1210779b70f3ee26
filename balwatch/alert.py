"""One alert notification (a lifecycle transition) and its JSON form (docs/alerts.md).

The rule engine produces :class:`Alert` values; the outbox stores ``to_json()`` and reads it
back with :meth:`Alert.from_json`; MQTT and generic webhooks publish ``to_json()`` as is.
``id`` is new for every notification (consumers dedupe on it: delivery is at least once),
``fingerprint`` is the same for every notification of one (rule, account, venue, asset), or
of one (rule, group).
:data:`JSON_SCHEMA` is the document's JSON Schema (``balwatch schema --alert``).

``instance`` and ``url`` say where an alert comes from; the producers (engine, self-alerts)
leave them empty and the daemon fills them from its config with :func:`placed` just before
an alert is committed, so they follow a reload like every other setting.

``notify`` (the sinks to use, ``None`` = all) is routing, not content: it is not part of the
JSON document, so ``from_json`` takes it as an argument.

An alert of a group (a rule with ``group_by``) carries ``group``: the rule's ``group_by``
keys with this group's values (``{"asset": "USDT"}``; ``{}`` for ``group_by: []``), null in
every other alert; ``account``, ``exchange``, ``venue`` and ``asset`` are those of the group,
null where the group has none (``account`` and ``exchange`` are never null for other
alerts, and the schema says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, cast, get_args

from balwatch.money import decimal_text

Severity = Literal["info", "warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "warning", "critical")
# Lowest first: a sink with ``min_severity`` takes alerts of that rank and above.
SEVERITY_RANK: Final[Mapping[str, int]] = {name: rank for rank, name in enumerate(SEVERITIES)}
Status = Literal["firing", "resolved"]
Event = Literal["firing", "repeat", "resolved"]
VERSION: Final = 1
JSON_KEYS: Final = (
    "version",
    "id",
    "fingerprint",
    "status",
    "event",
    "rule",
    "severity",
    "account",
    "exchange",
    "venue",
    "asset",
    "summary",
    "description",
    "labels",
    "expression",
    "values",
    "started_at",
    "resolved_at",
    "observed_at",
    "instance",
    "url",
    "group",
)
# Keys that documents written before they existed lack (outbox rows, saved self-alerts).
_ADDED_KEYS: Final = frozenset({"instance", "url", "group"})


_TEXT: Final = {"type": "string"}
_NAME: Final = {"type": "string", "minLength": 1}
_OPTIONAL_NAME: Final = {"type": ["string", "null"], "minLength": 1}
_TIME: Final = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z$",
    "description": "UTC, ISO-8601 with Z",
}
JSON_SCHEMA: Final[Mapping[str, object]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "balwatch alert",
    "description": (
        "One notification: the same document on MQTT and in generic webhooks. Delivery is at "
        "least once: dedupe on id. Keys may be added within a version; none is removed."
    ),
    "type": "object",
    "properties": {
        "version": {"const": VERSION},
        "id": {**_NAME, "description": "unique per notification"},
        "fingerprint": {
            "type": "string",
            "pattern": "^[0-9a-f]{16}$",
            "description": "stable per rule, account, venue and asset (a group's: per rule "
            "and group)",
        },
        "status": {"enum": ["firing", "resolved"]},
        "event": {"enum": list(get_args(Event))},
        "rule": _NAME,
        "severity": {"enum": list(SEVERITIES)},
        "account": {**_OPTIONAL_NAME, "description": "null only for a group without one"},
        "exchange": {**_OPTIONAL_NAME, "description": "null only for a group without one"},
        "venue": {
            **_OPTIONAL_NAME,
            "description": "null for account-scope alerts and groups without one",
        },
        "asset": {
            **_OPTIONAL_NAME,
            "description": "null for account-scope alerts and groups without one",
        },
        "summary": {
            **_TEXT,
            "description": "on resolve: the text sent when the alert fired, or the rule's "
            "resolved_summary",
        },
        "description": _TEXT,
        "labels": {"type": "object", "additionalProperties": _TEXT},
        "expression": {**_TEXT, "description": "the rule's when; empty for balwatch's own"},
        "values": {
            "type": "object",
            "additionalProperties": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
            "description": "what the expressions read, as decimal strings",
        },
        "started_at": _TIME,
        "resolved_at": {"anyOf": [_TIME, {"type": "null"}]},
        "observed_at": _TIME,
        "instance": {**_NAME, "description": "the installation that sent it (config instance)"},
        "url": {
            "anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}],
            "description": "<external_url>/api/alerts/<fingerprint>; null without external_url",
        },
        "group": {
            "anyOf": [
                {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                {"type": "null"},
            ],
            "description": "a portfolio rule's alert: its group_by keys with this group's "
            "values (null where the group's rows have none); null for other alerts",
        },
    },
    "required": list(JSON_KEYS),
    "allOf": [
        {  # A resolve, and only a resolve, is resolved and has a resolved_at.
            "if": {"properties": {"event": {"const": "resolved"}}},
            "then": {
                "properties": {"status": {"const": "resolved"}, "resolved_at": {"type": "string"}}
            },
            "else": {
                "properties": {"status": {"const": "firing"}, "resolved_at": {"type": "null"}}
            },
        },
        {  # Only a group may lack an account and an exchange.
            "if": {"properties": {"group": {"type": "null"}}},
            "then": {"properties": {"account": _NAME, "exchange": _NAME}},
        },
    ],
}


def fingerprint(rule: str, account: str, venue: str | None, asset: str | None) -> str:
    """Stable 64-bit hex id of one alert series; ``None`` venue/asset for account scope.

    JSON-encoding the parts keeps ``None`` distinct from any string and the separators
    unambiguous, so no two different tuples hash the same input.
    """
    data = json.dumps([rule, account, venue, asset], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def group_fingerprint(rule: str, group: Mapping[str, str | None]) -> str:
    """Stable id of one group's alert series: the rule and the group's key values, whatever
    the order ``group_by`` lists them in. A JSON object where a row has a string, so it never
    equals a :func:`fingerprint`."""
    data = json.dumps(
        [rule, dict(sorted(group.items()))], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def group_text(group: Mapping[str, str | None]) -> str:
    """``asset=USDT venue=bitso`` (``-`` for a value the group lacks); ``all`` for ``[]``."""
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in group.items()) or "all"


def new_id() -> str:
    return uuid.uuid4().hex


def iso_z(moment: datetime) -> str:
    """ISO-8601 in UTC with ``Z``; microseconds only when there are some."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds") + "Z"


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One notification. Times are timezone-aware; ``venue``/``asset`` are None for account
    scope; for a group, any of ``account``/``exchange``/``venue``/``asset`` the group lacks is
    None and ``group`` is set (module docstring). ``status`` is ``resolved`` exactly for the
    ``resolved`` event, which alone has a ``resolved_at``; ``started_at`` is when the
    condition first held (the start of ``pending``): started 10:00, fired 10:02 with
    ``for: 2m``.
    """

    fingerprint: str
    event: Event
    rule: str
    severity: Severity
    account: str | None
    exchange: str | None
    venue: str | None
    asset: str | None
    summary: str
    description: str
    labels: Mapping[str, str]
    expression: str
    values: Mapping[str, Decimal]
    started_at: datetime
    observed_at: datetime
    resolved_at: datetime | None = None
    notify: tuple[str, ...] | None = None
    group: Mapping[str, str | None] | None = None
    id: str = field(default_factory=new_id)
    instance: str = ""
    url: str | None = None

    def __post_init__(self) -> None:
        if self.event not in get_args(Event):
            raise ValueError(f"unknown event {self.event!r}")
        if (self.event == "resolved") != (self.resolved_at is not None):
            raise ValueError("resolved_at is set exactly for the resolved event")
        if self.group is None and (self.account is None or self.exchange is None):
            raise ValueError("only the alert of a group may lack an account or an exchange")
        for name in ("started_at", "observed_at", "resolved_at"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    @property
    def status(self) -> Status:
        return "resolved" if self.event == "resolved" else "firing"

    def to_json(self) -> dict[str, object]:
        """The alert document (docs/alerts.md): amounts as decimal strings, times ISO with Z."""
        return {
            "version": VERSION,
            "id": self.id,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "event": self.event,
            "rule": self.rule,
            "severity": self.severity,
            "account": self.account,
            "exchange": self.exchange,
            "venue": self.venue,
            "asset": self.asset,
            "summary": self.summary,
            "description": self.description,
            "labels": dict(self.labels),
            "expression": self.expression,
            "values": {k: decimal_text(v) for k, v in self.values.items()},
            "started_at": iso_z(self.started_at),
            "resolved_at": None if self.resolved_at is None else iso_z(self.resolved_at),
            "observed_at": iso_z(self.observed_at),
            "instance": self.instance,
            "url": self.url,
            "group": None if self.group is None else dict(self.group),
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, object], *, notify: tuple[str, ...] | None = None
    ) -> Alert:
        """Inverse of :meth:`to_json`; raises ValueError naming the first bad key."""
        missing = [key for key in JSON_KEYS if key not in data and key not in _ADDED_KEYS]
        if missing:
            raise ValueError(f"alert JSON lacks {', '.join(missing)}")
        if data["version"] != VERSION:
            raise ValueError(f"alert JSON version {data['version']!r} is not {VERSION}")
        event = _str(data, "event")
        if event not in get_args(Event):
            raise ValueError(f"alert JSON event {event!r} is unknown")
        status = _str(data, "status")
        if status != ("resolved" if event == "resolved" else "firing"):
            raise ValueError(f"alert JSON status {status!r} does not fit event {event!r}")
        severity = _str(data, "severity")
        if severity not in SEVERITIES:
            raise ValueError(f"alert JSON severity {severity!r} is unknown")
        resolved_at = data["resolved_at"]
        return cls(
            id=_str(data, "id"),
            fingerprint=_str(data, "fingerprint"),
            event=cast(Event, event),
            rule=_str(data, "rule"),
            severity=severity,
            account=_opt_str(data, "account"),
            exchange=_opt_str(data, "exchange"),
            venue=_opt_str(data, "venue"),
            asset=_opt_str(data, "asset"),
            summary=_str(data, "summary"),
            description=_str(data, "description"),
            labels=_str_map(data, "labels"),
            expression=_str(data, "expression"),
            values={k: _decimal(k, v) for k, v in _str_map(data, "values").items()},
            started_at=_time(data["started_at"], "started_at"),
            resolved_at=None if resolved_at is None else _time(resolved_at, "resolved_at"),
            observed_at=_time(data["observed_at"], "observed_at"),
            notify=notify,
            instance=_str(data, "instance") if "instance" in data else "",
            url=_opt_str(data, "url") if "url" in data else None,
            group=_group(data),
        )


def alert_url(external_url: str | None, fingerprint: str) -> str | None:
    """Where the daemon's HTTP API answers for one alert, when ``external_url`` is set."""
    return None if external_url is None else f"{external_url}/api/alerts/{fingerprint}"


def placed(alert: Alert, instance: str, external_url: str | None) -> Alert:
    """``alert`` with the ``instance`` and ``url`` of the installation that sends it."""
    return dataclasses.replace(
        alert, instance=instance, url=alert_url(external_url, alert.fingerprint)
    )


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"alert JSON {key} must be a string")
    return value


def _opt_str(data: Mapping[str, object], key: str) -> str | None:
    return None if data[key] is None else _str(data, key)


def _group(data: Mapping[str, object]) -> dict[str, str | None] | None:
    value = data.get("group")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items()
    ):
        raise ValueError("alert JSON group must map strings to strings or null")
    return cast(dict[str, str | None], value)


def _str_map(data: Mapping[str, object], key: str) -> dict[str, str]:
    value = data[key]
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"alert JSON {key} must map strings to strings")
    return cast(dict[str, str], value)


def _decimal(key: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"alert JSON value {key!r} is not a decimal: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"alert JSON value {key!r} is not finite: {text!r}")
    return value


def _time(value: object, key: str) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError(f"alert JSON {key} must be an ISO-8601 time ending in Z")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"alert JSON {key} is not an ISO-8601 time: {value!r}") from None
