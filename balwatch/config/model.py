"""The validated shape of ``balwatch.yaml`` (docs/configuration.md).

Every model forbids unknown keys, so a typo is an error and not a silently ignored
setting. Values that can carry credentials (account credentials, sink URLs and secrets,
webhook headers) are :class:`~balwatch.secret.Secret`, so no repr or log shows them.

Error convention, relied on by :mod:`balwatch.config.load`: validators raise
:func:`~balwatch.config.problems.field_error` with a message that may contain ``{input}``
where the offending value belongs; the loader fills it in only when the value came verbatim
from the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

from balwatch.alert import SEVERITY_RANK, Severity
from balwatch.config.intervals import InhibitRule, TimeInterval
from balwatch.config.problems import field_error
from balwatch.config.yamlsource import YamlFloat
from balwatch.durations import format_duration, parse_duration
from balwatch.secret import Secret
from balwatch.sink import Grouping
from balwatch.sizes import format_size, parse_size

if TYPE_CHECKING:
    from balwatch.adapters.base import AccountSpec, Adapter

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
# MQTT's Message Expiry Interval is a four-byte count of seconds.
MAX_MESSAGE_EXPIRY: Final = 2**32 - 1


def _invalid_at(
    title: str, errors: list[tuple[tuple[str | int, ...], str, object]]
) -> ValidationError:
    """Errors at paths below the validated value: pydantic prefixes them with its location."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=field_error(message), loc=loc, input=value)
            for loc, message, value in errors
        ],
    )


@dataclass(frozen=True, slots=True)
class ConfigContext:
    """What validation needs from outside the data: where the file is, and the environment."""

    base_dir: Path = field(default_factory=Path.cwd)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


def _context(info: ValidationInfo) -> ConfigContext:
    return info.context if isinstance(info.context, ConfigContext) else ConfigContext()


def adapter_for(exchange: object) -> type[Adapter] | None:
    """The adapter registered as ``exchange``, or None for anything else."""
    # Imported here, not at module level: adapters may one day read config types.
    from balwatch.adapters import REGISTRY

    return REGISTRY.get(exchange) if isinstance(exchange, str) else None


# --- reusable field types -------------------------------------------------------------


DURATION_PATTERN: Final = r"^\d+(\.\d+)?(ms|s|m|h|d)$"
DAY: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class DurationRange:
    """A duration field, in seconds as float (durations are timer arguments, never money),
    allowed from ``low`` to ``high``: ``Annotated[float, DurationRange(1, DAY)]``.

    Every duration has bounds that make sense for its field: without them a 400-digit
    ``keepalive`` passes validation and then overflows the timer that takes it.
    """

    low: float
    high: float

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: Any) -> dict[str, Any]:
        return {"type": "string", "pattern": DURATION_PATTERN, "description": self.allowed}

    @property
    def allowed(self) -> str:
        return f"from {format_duration(self.low)} to {format_duration(self.high)}"

    def validate(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise field_error("expected a duration like 500ms, 30s, 5m, 2h or 1d, got {input}")
        if not isinstance(value, str):
            raise field_error("expected a duration with a unit, like 30s, got {input}")
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise field_error(
                "expected a duration like 500ms, 30s, 5m, 2h or 1d, got {input}"
            ) from None
        if not self.low <= seconds <= self.high:
            raise field_error(f"expected a duration {self.allowed}, got {{input}}")
        return seconds


# How often an account is polled: exchanges limit requests, and a day is the longest gap
# that still makes `age` rules useful.
PollInterval = Annotated[float, DurationRange(0.1, DAY)]
# One request to a source or a webhook.
RequestTimeout = Annotated[float, DurationRange(0.1, 600.0)]
# MQTT carries the keep-alive as a 16-bit count of whole seconds.
Keepalive = Annotated[float, DurationRange(1.0, 65_535.0)]
# MQTT v5 carries a message expiry as a 32-bit count of seconds (136 years).
ActiveExpiry = Annotated[float, DurationRange(1.0, float(MAX_MESSAGE_EXPIRY))]
# Chat grouping (Alertmanager's defaults): the first message of a group waits this long for
# more of it; later ones come at most this often.
GroupWait = Annotated[float, DurationRange(0.0, 3600.0)]
GroupInterval = Annotated[float, DurationRange(1.0, DAY)]
# How often a live price source is read, and how long a price it gave stays usable.
PriceInterval = Annotated[float, DurationRange(0.1, DAY)]
PriceMaxAge = Annotated[float, DurationRange(1.0, 7 * DAY)]
# How long a replica's lease on its accounts lives unrenewed: the longest an account goes
# unpolled after its replica died. Renewed every quarter of it, so 2 s is a floor that a
# database round trip still fits in; past 10 minutes a dead replica is noticed too late.
LeaseTtl = Annotated[float, DurationRange(2.0, 600.0)]


# A response size cap below this could not hold an error message; above it, no cap at all.
_SIZE_BOUNDS: Final = (1024, 1024**3)


def _size(value: object) -> int:
    low, high = _SIZE_BOUNDS
    expected = f"a size from {format_size(low)} to {format_size(high)}, like 512KiB or 8MiB"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise field_error(f"expected {expected}, got {{input}}")
    try:
        size = parse_size(str(value))
    except ValueError:
        raise field_error(f"expected {expected}, got {{input}}") from None
    if not low <= size <= high:
        raise field_error(f"expected {expected}, got {{input}}")
    return size


SIZE_PATTERN: Final = r"^[0-9]+(B|KiB|MiB|GiB)?$"
# Bytes: a number, or a number with B, KiB, MiB or GiB.
ByteSize = Annotated[
    int,
    PlainValidator(_size),
    WithJsonSchema(
        {
            "description": "Bytes, or a number with B, KiB, MiB or GiB, like 8MiB",
            "anyOf": [
                {"type": "integer", "minimum": _SIZE_BOUNDS[0], "maximum": _SIZE_BOUNDS[1]},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
        }
    ),
]


def _secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        # YAML reads unquoted 0123 or 1e5 as numbers: the text would not survive.
        raise field_error("expected a string; put the value in quotes")
    if not value:
        raise field_error("expected a value, got an empty string")
    return Secret(value)


SecretText = Annotated[
    Secret,
    PlainValidator(_secret),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string"}),
]


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise field_error("expected a name of letters, digits, '_', '.' and '-', got {input}")
    return value


Name = Annotated[str, AfterValidator(_name)]


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    return _context(info).base_dir / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise field_error("file {input} not found (relative paths start at the config file)")
    return value


ExistingFile = Annotated[ConfigPath, AfterValidator(_existing_file)]


def _check_url(value: str, schemes: tuple[str, ...]) -> None:
    """The error names the expected schemes but never echoes the value: it may be secret."""
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        raise field_error(f"expected a URL starting with {expected}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise field_error(f"expected a URL with a host, starting with {expected}")


def _number_text(value: object) -> object:
    """YAML reads `protocol: 5` or `chat_id: -100123` as numbers; these fields are text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _text_number(value: object) -> object:
    """A ``${VAR}`` always gives text: ``qos: ${QOS}`` means the number it holds."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def redact_url(url: Secret) -> str:
    """``scheme://host:port/`` of a sink URL, safe to log: no user, password, path or query."""
    try:
        parts = urlsplit(url.reveal())
        port = parts.port
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections -------------------------------------------------------------------------


# Open HTTP connections at once; the server lowers it to a quarter of its descriptor limit.
DEFAULT_MAX_CONNECTIONS: Final = 256


class HttpConfig(_Model):
    listen: str
    # Required as `Authorization: Bearer <token>` on /api/*; unset: anyone who reaches the
    # listener reads every balance (`check` warns when that is beyond this host).
    token: SecretText | None = None
    max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, ge=1, le=65_536)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _split_listen(value)
        return value

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


def _split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9464
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise field_error("expected host:port like 127.0.0.1:9464, got {input}")
    return host, int(port)


class LogConfig(_Model):
    # auto: console on a terminal, json otherwise (journald).
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(_Model):
    # The balwatch_balance and balwatch_balance_usd series of /metrics; off keeps balances
    # out of a monitoring system that should not hold them. A reload applies a change.
    balances: bool = True


class DefaultsConfig(_Model):
    poll_interval: PollInterval = 30.0
    timeout: RequestTimeout = 10.0
    # An answer over this fails the poll as bad_response, unread: room for tens of
    # thousands of balance rows, far below what would strain memory or the event loop.
    max_response_size: ByteSize = 8 * 1024 * 1024


class AccountConfig(_Model):
    name: Name
    exchange: str
    # None: the adapter's production URL (see `Config.account_spec`).
    base_url: str | None = Field(default=None, validate_default=True)
    poll_interval: PollInterval | None = None
    timeout: RequestTimeout | None = None
    max_response_size: ByteSize | None = None
    credentials: dict[str, SecretText] = Field(default_factory=dict, validate_default=True)
    # An instance of the adapter's `options_model`.
    options: SerializeAsAny[BaseModel] = Field(default_factory=dict, validate_default=True)
    labels: dict[str, str] = Field(default_factory=dict)

    # Checks below depend on `exchange`; pydantic passes fields validated so far in
    # `info.data`, so a bad exchange (already an error) skips them.

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        from balwatch.adapters import REGISTRY

        if value not in REGISTRY:
            supported = ", ".join(sorted(REGISTRY))
            raise field_error("exchange {input} is not supported; expected one of: " + supported)
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        adapter = adapter_for(info.data.get("exchange"))
        if value is None:
            if adapter is not None and adapter.default_base_url is None:
                raise field_error(
                    f"missing required key 'base_url' in account: {adapter.name} has no default URL"
                )
            return None
        _check_url(value, ("https", "http"))
        return value.rstrip("/")

    @field_validator("credentials")
    @classmethod
    def _credential_set(cls, value: dict[str, Secret], info: ValidationInfo) -> dict[str, Secret]:
        adapter = adapter_for(info.data.get("exchange"))
        if adapter is None or not adapter.credential_sets:  # no sets: checked with the options
            return value
        if frozenset(value) in adapter.credential_sets:
            return value
        sets = adapter.credential_sets
        known = frozenset().union(*sets)
        allowed = " or ".join("{" + ", ".join(sorted(keys)) + "}" for keys in sets if keys)
        if frozenset() in sets:
            allowed += " or none"
        expected = f"expected one of: {allowed}"
        unknown = [key for key in value if key not in known]
        if unknown:
            # Point at each unknown key rather than at the whole mapping.
            raise _invalid_at(
                "credentials",
                [
                    (
                        (key, "[key]"),
                        f"unknown credential {key!r} for {adapter.name}; {expected}",
                        key,
                    )
                    for key in unknown
                ],
            )
        given = "{" + ", ".join(sorted(value)) + "}" if value else "none"
        raise field_error(f"credentials for {adapter.name} must be one of: {allowed}; got {given}")

    @field_validator("options", mode="plain")
    @classmethod
    def _adapter_options(cls, value: object, info: ValidationInfo) -> Any:
        adapter = adapter_for(info.data.get("exchange"))
        if adapter is None:
            return value
        # Errors raised here keep their location: pydantic prefixes them with `options`.
        return adapter.options_model.model_validate(value)

    @model_validator(mode="after")
    def _credentials_for_options(self) -> AccountConfig:
        problems = self.adapter.check_credentials(self.credentials, self.options)
        if problems:
            raise _invalid_at("account", [(loc, message, None) for loc, message in problems])
        return self

    @property
    def adapter(self) -> type[Adapter]:
        adapter = adapter_for(self.exchange)
        assert adapter is not None, "validated in _known_exchange"
        return adapter


class MqttSinkConfig(_Model):
    type: Literal["mqtt"]
    name: Name
    url: SecretText  # carries the broker password
    topic_prefix: str = "balwatch"
    qos: Annotated[Literal[0, 1, 2], BeforeValidator(_text_number)] = 1
    protocol: Annotated[
        Literal["3.1.1", "5"],
        BeforeValidator(_number_text, json_schema_input_type=Literal["3.1.1", "5", 5]),
    ] = "5"
    ca_file: ExistingFile | None = None
    client_cert: ExistingFile | None = None
    client_key: ExistingFile | None = None
    min_severity: Severity = "info"
    send_resolved: bool = True
    keepalive: Keepalive = 30.0
    # None: retained active/ alerts stay until they resolve (an AML lock can last weeks).
    active_expiry: ActiveExpiry | None = None
    # Names of `time_intervals`: muted inside any of mute_during, outside all of active_during.
    mute_during: tuple[str, ...] = ()
    active_during: tuple[str, ...] = ()

    @property
    def receives_resolved(self) -> bool:
        # Even without resolved events, the retained active/ alert must still be cleared.
        return True

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: Secret) -> Secret:
        _check_url(value.reveal(), ("mqtt", "mqtts"))
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or value.endswith("/") or "+" in value or "#" in value:
            raise field_error(
                "expected a topic prefix without '+', '#' or a trailing '/', got {input}"
            )
        return value

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttSinkConfig:
        if self.client_key is not None and self.client_cert is None:
            message = "client_key needs client_cert; set both"
            raise _invalid_at("mqtt", [(("client_key",), message, None)])
        if self.active_expiry is not None and self.protocol != "5":
            message = "active_expiry needs protocol 5: MQTT 3.1.1 has no message expiry"
            raise _invalid_at("mqtt", [(("active_expiry",), message, None)])
        return self


CHAT_FORMATS: Final = ("slack", "discord", "telegram", "mattermost", "teams")
DEFAULT_GROUP_BY: Final = ("rule",)
DEFAULT_GROUP_WAIT: Final = 30.0
DEFAULT_GROUP_INTERVAL: Final = 300.0
# `group_by: [...]`: no grouping, every alert its own message (Alertmanager's spelling).
NO_GROUPING: Final = "..."
_GROUP_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# What a mention may be, per service: only these ping anyone (docs/chat.md).
_MENTIONS: Final[Mapping[str, tuple[re.Pattern[str], str]]] = {
    "slack": (
        re.compile(r"<(!here|!channel|!everyone|@[UW][A-Z0-9]+|!subteam\^[A-Z0-9]+)>"),
        "<!here>, <!channel>, <!everyone>, <@U...> or <!subteam^ID>",
    ),
    "mattermost": (re.compile(r"@[A-Za-z0-9][A-Za-z0-9._-]*"), "@here, @channel, @all or @name"),
    "discord": (
        re.compile(r"<@&[0-9]{5,25}>|[0-9]{5,25}"),
        "a role id, such as 123456789012345678",
    ),
}
# Telegram `disable_notification`: what is sent without a sound.
QuietKind = Literal["info", "warning", "critical", "resolved"]
DEFAULT_QUIET: Final[tuple[QuietKind, ...]] = ("info", "resolved")


def _group_name(value: str) -> str:
    if value != NO_GROUPING and not _GROUP_NAME_RE.fullmatch(value):
        raise field_error(
            "expected an alert field (rule, severity, account, exchange, venue, asset, "
            "instance, group) or a label name, or ..., got {input}"
        )
    return value


GroupName = Annotated[
    str,
    AfterValidator(_group_name),
    WithJsonSchema({"type": "string", "pattern": r"^([A-Za-z_][A-Za-z0-9_.-]*|\.\.\.)$"}),
]


class WebhookSinkConfig(_Model):
    type: Literal["webhook"]
    name: Name
    format: Literal["generic", "slack", "discord", "telegram", "mattermost", "teams"] = "generic"
    url: SecretText  # Slack/Discord/Telegram URLs are bearer credentials themselves
    secret: SecretText | None = None  # HMAC key for the generic signature header
    chat_id: (
        Annotated[str, BeforeValidator(_number_text, json_schema_input_type=str | int)] | None
    ) = None
    # Values are secrets: `Authorization: Bearer ...` is the usual reason to set headers.
    headers: dict[str, SecretText] = Field(default_factory=dict)
    timeout: RequestTimeout = 10.0
    verify_tls: bool = True
    min_severity: Severity = "info"
    send_resolved: bool = True
    group_by: tuple[GroupName, ...] | None = Field(
        None, description="chat formats: default [rule]; [...] sends each alert alone"
    )
    group_wait: GroupWait | None = Field(None, description="default 30s")
    group_interval: GroupInterval | None = Field(None, description="default 5m")
    # Severity -> who a message with a firing alert of that severity pings.
    mention: dict[Severity, str] = Field(default_factory=dict)
    message_thread_id: int | None = Field(None, ge=1, description="telegram forum topic")
    disable_notification: tuple[QuietKind, ...] | None = Field(
        None, description="telegram: sent without a sound; default [info, resolved]"
    )
    # Names of `time_intervals`: muted inside any of mute_during, outside all of active_during.
    mute_during: tuple[str, ...] = ()
    active_during: tuple[str, ...] = ()

    @property
    def receives_resolved(self) -> bool:
        return self.send_resolved

    @property
    def grouping(self) -> Grouping | None:
        """How alerts are grouped into messages; None: one message per alert.

        Chat formats group by default; ``generic`` only when a grouping key is set.
        """
        set_any = (self.group_by, self.group_wait, self.group_interval) != (None, None, None)
        if self.format == "generic" and not set_any:
            return None
        by = DEFAULT_GROUP_BY if self.group_by is None else self.group_by
        if by == (NO_GROUPING,):
            return None
        wait = DEFAULT_GROUP_WAIT if self.group_wait is None else self.group_wait
        interval = DEFAULT_GROUP_INTERVAL if self.group_interval is None else self.group_interval
        return Grouping(by, wait, interval)

    def secrets(self) -> tuple[Secret, ...]:
        """This sink's secret values: the URL's, the headers', the signing secret."""
        found = [*_url_secrets(self.url), *self.headers.values()]
        return (*found, *([self.secret] if self.secret is not None else []))

    @property
    def quiet(self) -> frozenset[str]:
        """Telegram: severities (of firing alerts) and ``resolved`` sent without a sound."""
        chosen = DEFAULT_QUIET if self.disable_notification is None else self.disable_notification
        return frozenset(chosen)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: Secret) -> Secret:
        _check_url(value.reveal(), ("https", "http"))
        return value

    @model_validator(mode="after")
    def _per_format(self) -> WebhookSinkConfig:
        errors: list[tuple[tuple[str | int, ...], str, object]] = []
        if self.format == "telegram" and self.chat_id is None:
            errors.append(
                (
                    ("chat_id",),
                    "missing required key 'chat_id' in sink: format telegram needs it",
                    None,
                )
            )
        for key in ("chat_id", "message_thread_id", "disable_notification"):
            if self.format != "telegram" and getattr(self, key) is not None:
                errors.append(
                    ((key,), f"{key} is only used by format telegram, not {self.format}", None)
                )
        errors += self._grouping_errors()
        errors += self._mention_errors()
        if errors:
            raise _invalid_at("webhook", errors)
        return self

    def _grouping_errors(self) -> list[tuple[tuple[str | int, ...], str, object]]:
        by = self.group_by or ()
        errors: list[tuple[tuple[str | int, ...], str, object]] = []
        if NO_GROUPING in by and len(by) > 1:
            message = "'...' means no grouping: list it alone, or list fields without it"
            errors.append((("group_by",), message, None))
        seen: set[str] = set()
        for index, name in enumerate(by):
            if name in seen:
                errors.append((("group_by", index), f"{name} is listed twice", name))
            seen.add(name)
        if by == (NO_GROUPING,):
            for key in ("group_wait", "group_interval"):
                if getattr(self, key) is not None:
                    message = f"{key} has no effect with group_by [...] (no grouping)"
                    errors.append(((key,), message, None))
        return errors

    def _mention_errors(self) -> list[tuple[tuple[str | int, ...], str, object]]:
        if not self.mention:
            return []
        rule = _MENTIONS.get(self.format)
        if rule is None:
            message = f"mention is for formats slack, mattermost and discord, not {self.format}"
            return [(("mention",), message, None)]
        pattern, expected = rule
        return [
            (
                ("mention", severity),
                f"expected {expected} for format {self.format}, got {{input}}",
                value,
            )
            for severity, value in sorted(self.mention.items(), key=lambda i: SEVERITY_RANK[i[0]])
            if not all(pattern.fullmatch(token) for token in value.split()) or not value.split()
        ]


SinkConfig = Annotated[MqttSinkConfig | WebhookSinkConfig, Field(discriminator="type")]
SINK_TYPES: Final[Mapping[str, type[MqttSinkConfig | WebhookSinkConfig]]] = {
    "mqtt": MqttSinkConfig,
    "webhook": WebhookSinkConfig,
}


# --- prices ---------------------------------------------------------------------------

# Asset codes as rows carry them: upper case (a lower-case key would silently price nothing).
_ASSET_RE: Final = re.compile(r"[A-Z0-9]+")
_PRICE_RE: Final = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")
_PRICE_EXAMPLE: Final = 'like 1 or "0.055"'
# Every price is in USD; USD itself is worth one.
USD: Final = "USD"


def _asset(value: object) -> str:
    if not isinstance(value, str) or not _ASSET_RE.fullmatch(value):
        raise field_error("expected an asset code in capitals and digits, like USDT, got {input}")
    return value


def _price(value: object) -> Decimal:
    """An exact price: a whole number, or decimal text; a YAML float is read from its text."""
    if isinstance(value, YamlFloat):
        text = value.text
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise field_error(f"expected a price {_PRICE_EXAMPLE}, got {{input}}")
    if text.startswith("-"):
        raise field_error("a price cannot be negative, got {input}")
    if not _PRICE_RE.fullmatch(text):
        raise field_error(f"expected a price as a plain decimal {_PRICE_EXAMPLE}, got {{input}}")
    price = Decimal(text)
    if not price:
        raise field_error("a price must be above zero; leave the asset out to have no price")
    return price


Price = Annotated[
    Decimal,
    PlainValidator(_price),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                {"type": "number", "exclusiveMinimum": 0},
            ]
        }
    ),
]
Asset = Annotated[
    str, PlainValidator(_asset), WithJsonSchema({"type": "string", "pattern": r"^[A-Z0-9]+$"})
]


def _pair(value: object) -> tuple[str, str]:
    if isinstance(value, str):
        base, slash, quote = value.partition("/")
        if slash and _ASSET_RE.fullmatch(base) and _ASSET_RE.fullmatch(quote):
            if base == quote:
                raise field_error("a pair needs two different assets, got {input}")
            return base, quote
    raise field_error("expected a market as BASE/QUOTE in capitals, like BTC/USDT, got {input}")


Pair = Annotated[
    tuple[str, str],
    PlainValidator(_pair),
    PlainSerializer(lambda pair: "/".join(pair), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Z0-9]+/[A-Z0-9]+$"}),
]


class CcxtPriceSource(_Model):
    """Prices from a ccxt exchange's public tickers: each pair's last price."""

    type: Literal["ccxt"]
    id: str = Field(description="ccxt exchange id, such as binance or bitso")
    pairs: tuple[Pair, ...] = Field(
        min_length=1, description="markets BASE/QUOTE; a price known for one side gives the other"
    )
    interval: PriceInterval = 60.0
    timeout: RequestTimeout | None = None
    base_url: str | None = None
    ccxt_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _ticker_exchange(cls, value: str) -> str:
        from balwatch.adapters.ccxtsource import exchange_problem

        problem = exchange_problem(value, ("fetchTicker", "fetchTickers"))
        if problem is not None:
            raise field_error(problem)
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("https", "http"))
        return value


class RowsPriceSource(_Model):
    """The ``rate_usd`` that balance rows carry (CoinAPI's), as the price of their asset."""

    type: Literal["rows"]


PriceSource = Annotated[CcxtPriceSource | RowsPriceSource, Field(discriminator="type")]
PRICE_SOURCE_TYPES: Final = ("ccxt", "rows")


class PricesConfig(_Model):
    """Where every row's ``rate_usd`` comes from, when its source gives none."""

    static: dict[Asset, Price] = Field(
        default_factory=dict, description="fixed prices: stablecoins and pegs"
    )
    sources: tuple[PriceSource, ...] = ()
    max_age: PriceMaxAge = Field(600.0, description="a price older than this is no price")

    @model_validator(mode="after")
    def _consistent(self) -> PricesConfig:
        errors: list[tuple[tuple[str | int, ...], str, object]] = []
        kinds = [source.type for source in self.sources]
        if kinds.count("rows") > 1:
            errors.append((("sources",), "list the rows source once", None))
        for index, source in enumerate(self.sources):
            if isinstance(source, CcxtPriceSource) and source.interval > self.max_age:
                message = (
                    f"interval {format_duration(source.interval)} is longer than max_age "
                    f"{format_duration(self.max_age)}: its prices would lapse between refreshes"
                )
                errors.append((("sources", index, "interval"), message, None))
        if "rows" not in kinds:  # rows may price any asset: nothing is unknown then
            errors += [
                (("sources", index, "pairs", at), message, None)
                for index, at, message in _unpriceable_pairs(self.static, self.sources)
            ]
        if errors:
            raise _invalid_at("prices", errors)
        return self


def _unpriceable_pairs(
    static: Iterable[str], sources: Iterable[CcxtPriceSource | RowsPriceSource]
) -> list[tuple[int, int, str]]:
    """(source, pair index, message) for each pair neither of whose assets can get a price."""
    pairs = [
        (index, at, pair)
        for index, source in enumerate(sources)
        if isinstance(source, CcxtPriceSource)
        for at, pair in enumerate(source.pairs)
    ]
    known = {USD, *static}
    grew = True
    while grew:
        grew = False
        for _, _, (base, quote) in pairs:
            if (base in known) != (quote in known):
                known.update((base, quote))
                grew = True
    return [
        (
            index,
            at,
            f"neither {base} nor {quote} has a price: give one of them a static price, "
            f"or list a pair that prices it (USD is 1)",
        )
        for index, at, (base, quote) in pairs
        if base not in known
    ]


def _default_state_dir(value: object, info: ValidationInfo) -> object:
    if value is not None:
        return value
    # systemd's StateDirectory= sets this; several directories come colon-separated.
    from_systemd = _context(info).environ.get("STATE_DIRECTORY", "").split(":")[0]
    return from_systemd or ".balwatch"


def _external_url(value: str | None) -> str | None:
    if value is None:
        return None
    _check_url(value, ("https", "http"))
    if urlsplit(value).query or urlsplit(value).fragment:
        raise field_error("expected a base URL without '?' or '#', got {input}")
    return value.rstrip("/")


def host_name() -> str:
    """The default ``instance``: this host's name."""
    return socket.gethostname() or "balwatch"


def _instance(value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise field_error("expected a name of printable characters, got {input}")
    return value


def _rules_relative(globs: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    base_dir = _context(info).base_dir
    return tuple(os.path.join(base_dir, pattern) for pattern in globs)


StateDir = Annotated[ConfigPath, BeforeValidator(_default_state_dir)]
Instance = Annotated[str, AfterValidator(_instance)]
STATE_BACKENDS: Final = ("sqlite", "postgres")


class StateConfig(_Model):
    """Which store holds the state: SQLite in ``state_dir`` (one daemon), or a PostgreSQL
    database that replicas share (``dsn``, a libpq connection string or URL)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: SecretText | None = None
    lease_ttl: LeaseTtl = 8.0

    @field_validator("dsn")
    @classmethod
    def _dsn_form(cls, value: Secret | None) -> Secret | None:
        # Checked for its form only (the server is tried by `check --connect`), and the
        # error never echoes it: it carries the password.
        if value is not None and not _is_dsn(value.reveal()):
            raise field_error(
                "expected a PostgreSQL connection string: a URL starting with postgresql:// "
                "or postgres://, or keywords like 'host=db dbname=balwatch user=balwatch'"
            )
        return value

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StateConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise _invalid_at(
                "state", [(("dsn",), "missing required key 'dsn' for backend postgres", None)]
            )
        if self.backend == "sqlite" and self.dsn is not None:
            message = "dsn is for backend postgres; SQLite lives in state_dir"
            raise _invalid_at("state", [(("dsn",), message, None)])
        return self

    def secrets(self) -> list[Secret]:
        """The DSN, and the password in it on its own (a driver may quote just that)."""
        return [] if self.dsn is None else [self.dsn, *dsn_passwords(self.dsn.reveal())]


def _is_dsn(text: str) -> bool:
    if text.startswith(("postgresql://", "postgres://")):
        return True
    return bool(_DSN_KEYWORD.match(text))


# `key=value` pairs of a libpq keyword connection string; a value may be 'quoted' with \' and
# \\ escapes inside.
_DSN_KEYWORD: Final = re.compile(r"\s*[a-z_]+\s*=")
_DSN_PAIR: Final = re.compile(r"([a-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def dsn_passwords(dsn: str) -> list[Secret]:
    """The password in a DSN, as written and as it means (percent- or quote-decoded)."""
    found: list[str] = []
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        with contextlib.suppress(ValueError):  # a bad port: libpq refuses the DSN anyway
            if parts.password:
                found += [parts.password, unquote(parts.password)]
        found += [value for key, value in parse_qsl(parts.query) if key == "password"]
    else:
        for key, value in _DSN_PAIR.findall(dsn):
            if key == "password" and value:
                found.append(value)
                if value.startswith("'"):
                    found.append(re.sub(r"\\(.)", r"\1", value[1:-1]))
    return [Secret(text) for text in dict.fromkeys(found) if text]


class StateSettings(BaseModel):
    """Where the state lives: all the CLI's silence and outbox commands read of a config,
    so they work where its other references (credentials) cannot be resolved."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    state_dir: StateDir = Field(default=None, validate_default=True)
    state: StateConfig = StateConfig()
    instance: Instance = Field(default_factory=host_name)


class Config(_Model):
    state_dir: StateDir = Field(default=None, validate_default=True)
    # Names this installation in every alert (and a replica among others in cluster mode).
    instance: Instance = Field(default_factory=host_name, description="default: the host name")
    # Where this daemon's HTTP API is reached from outside: alerts then carry a `url`.
    external_url: Annotated[str | None, AfterValidator(_external_url)] = None
    rules: Annotated[tuple[str, ...], AfterValidator(_rules_relative)] = Field(
        default=("rules/*.yaml",), validate_default=True
    )
    http: HttpConfig | None = None
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    accounts: tuple[AccountConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    prices: PricesConfig | None = None
    # Named periods that rules and sinks use as mute_during / active_during.
    time_intervals: tuple[TimeInterval, ...] = ()
    # While an alert matching `source` fires, alerts matching `target` with `equal` values mute.
    inhibit: tuple[InhibitRule, ...] = ()
    # Where alert states, history and the outbox live (SQLite, or PostgreSQL for replicas).
    state: StateConfig = StateConfig()

    @field_validator("accounts", "sinks", "time_intervals")
    @classmethod
    def _unique_names(
        cls,
        items: tuple[AccountConfig | MqttSinkConfig | WebhookSinkConfig | TimeInterval, ...],
        info: ValidationInfo,
    ) -> tuple[Any, ...]:
        what = {"accounts": "account", "sinks": "sink"}.get(info.field_name or "", "time interval")
        message = f"duplicate {what} name {{input}}; names must be unique"
        seen: set[str] = set()
        duplicates: list[tuple[tuple[str | int, ...], str, object]] = []
        for index, item in enumerate(items):
            if item.name in seen:
                duplicates.append(((index, "name"), message, item.name))
            seen.add(item.name)
        if duplicates:
            raise _invalid_at(what, duplicates)
        return items

    @model_validator(mode="after")
    def _known_intervals(self) -> Config:
        """Every interval a sink names is defined (the rule loader checks the rules')."""
        known = {interval.name for interval in self.time_intervals}
        errors: list[tuple[tuple[str | int, ...], str, object]] = []
        for index, sink in enumerate(self.sinks):
            for key in ("mute_during", "active_during"):
                for at, name in enumerate(getattr(sink, key)):
                    if name not in known:
                        errors.append(((index, key, at), unknown_interval(known), name))
        if errors:
            raise _invalid_at("sinks", [(("sinks", *loc), m, v) for loc, m, v in errors])
        return self

    @property
    def intervals(self) -> dict[str, TimeInterval]:
        """The named time intervals by name."""
        return {interval.name: interval for interval in self.time_intervals}

    def account_spec(self, account: AccountConfig) -> AccountSpec:
        """What the account's adapter needs, with the config's defaults applied."""
        from balwatch.adapters.base import AccountSpec

        base_url = account.base_url or account.adapter.default_base_url
        assert base_url is not None, "validated in AccountConfig._base_url"
        return AccountSpec(
            name=account.name,
            base_url=base_url,
            timeout=account.timeout or self.defaults.timeout,
            credentials=account.credentials,
            options=account.options,
            max_response_size=account.max_response_size or self.defaults.max_response_size,
        )

    def poll_interval(self, account: AccountConfig) -> float:
        return account.poll_interval or self.defaults.poll_interval

    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value in the config, so the log redactor can scrub them."""
        found = [secret for account in self.accounts for secret in account.credentials.values()]
        found += self.state.secrets()
        if self.http is not None and self.http.token is not None:
            found.append(self.http.token)
        for sink in self.sinks:
            if isinstance(sink, WebhookSinkConfig):
                found.extend(sink.secrets())
            else:
                found.extend(_url_secrets(sink.url))
        return tuple(found)


def unknown_interval(known: Iterable[str]) -> str:
    """The message (for :func:`field_error`) for a ``mute_during``/``active_during`` name
    that no interval has."""
    names = ", ".join(sorted(known)) or "none (add a time_intervals: section)"
    return f"unknown time interval {{input}}; defined in time_intervals: {names}"


# A URL's path segment or query value this long may be a token (Slack's has 24 characters,
# Mattermost's 26, Telegram's 35 after the colon); shorter ones are words like "services".
_TOKEN_CHARS: Final = 16


def _url_secrets(url: Secret) -> list[Secret]:
    """The parts of a sink URL that are secret: the password, and the path and query
    (webhook URLs carry their token there), whole and each token in them on its own (a
    service may quote just the token). Scheme, user and host stay readable in logs."""
    parts = urlsplit(url.reveal())
    found = [Secret(parts.password)] if parts.password else []
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(tail) > 1:
        found.append(Secret(tail))
    pieces = [*parts.path.split("/"), *(value for _, value in parse_qsl(parts.query))]
    pieces += [half for piece in pieces for half in piece.split(":")]  # Telegram's bot<id>:<key>
    found += (Secret(piece) for piece in dict.fromkeys(pieces) if len(piece) >= _TOKEN_CHARS)
    return found
