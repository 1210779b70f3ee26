"""The validated shape of ``balwatch.yaml`` (DESIGN.md section 3).

Every model forbids unknown keys, so a typo is an error and not a silently ignored
setting. Values that can carry credentials (account credentials, sink URLs and secrets,
webhook headers) are :class:`~balwatch.secret.Secret`, so no repr or log shows them.

Error convention, relied on by :mod:`balwatch.config.load`: validators raise
:func:`~balwatch.config.problems.field_error` with a message that may contain ``{input}``
where the offending value belongs; the loader fills it in only when the value came verbatim
from the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import urlsplit

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
from pydantic_core import InitErrorDetails

from balwatch.alert import Severity
from balwatch.config.problems import field_error
from balwatch.durations import parse_duration
from balwatch.secret import Secret
from balwatch.sizes import format_size, parse_size

if TYPE_CHECKING:
    from balwatch.adapters.base import AccountSpec, Adapter

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


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


def _duration(value: object) -> float:
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
    if seconds <= 0:
        raise field_error("expected a duration above zero, got {input}")
    return seconds


# Seconds as float: durations are timer arguments, never money.
Duration = Annotated[
    float,
    PlainValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$"}),
]


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


# Bytes: a number, or a number with B, KiB, MiB or GiB.
ByteSize = Annotated[
    int,
    PlainValidator(_size),
    WithJsonSchema(
        {
            "description": "Bytes, or a number with B, KiB, MiB or GiB, like 8MiB",
            "anyOf": [
                {"type": "integer", "minimum": _SIZE_BOUNDS[0], "maximum": _SIZE_BOUNDS[1]},
                {"type": "string", "pattern": r"^[0-9]+(B|KiB|MiB|GiB)?$"},
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


class HttpConfig(_Model):
    listen: str

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


class DefaultsConfig(_Model):
    poll_interval: Duration = 30.0
    timeout: Duration = 10.0
    # An answer over this fails the poll as bad_response, unread: room for tens of
    # thousands of balance rows, far below what would strain memory or the event loop.
    max_response_size: ByteSize = 8 * 1024 * 1024


class AccountConfig(_Model):
    name: Name
    exchange: str
    # None: the adapter's production URL (see `Config.account_spec`).
    base_url: str | None = Field(default=None, validate_default=True)
    poll_interval: Duration | None = None
    timeout: Duration | None = None
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
        if adapter is None or frozenset(value) in adapter.credential_sets:
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
    keepalive: Duration = 30.0

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
        return self


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
    timeout: Duration = 10.0
    verify_tls: bool = True
    min_severity: Severity = "info"
    send_resolved: bool = True

    @property
    def receives_resolved(self) -> bool:
        return self.send_resolved

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: Secret) -> Secret:
        _check_url(value.reveal(), ("https", "http"))
        return value

    @model_validator(mode="after")
    def _telegram_chat(self) -> WebhookSinkConfig:
        if self.format == "telegram" and self.chat_id is None:
            message = "missing required key 'chat_id' in sink: format telegram needs it"
            raise _invalid_at("webhook", [(("chat_id",), message, None)])
        if self.format != "telegram" and self.chat_id is not None:
            message = f"chat_id is only used by format telegram, not {self.format}"
            raise _invalid_at("webhook", [(("chat_id",), message, None)])
        return self


SinkConfig = Annotated[MqttSinkConfig | WebhookSinkConfig, Field(discriminator="type")]
SINK_TYPES: Final[Mapping[str, type[MqttSinkConfig | WebhookSinkConfig]]] = {
    "mqtt": MqttSinkConfig,
    "webhook": WebhookSinkConfig,
}


def _default_state_dir(value: object, info: ValidationInfo) -> object:
    if value is not None:
        return value
    # systemd's StateDirectory= sets this; several directories come colon-separated.
    from_systemd = _context(info).environ.get("STATE_DIRECTORY", "").split(":")[0]
    return from_systemd or ".balwatch"


def _rules_relative(globs: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    base_dir = _context(info).base_dir
    return tuple(os.path.join(base_dir, pattern) for pattern in globs)


class Config(_Model):
    state_dir: Annotated[ConfigPath, BeforeValidator(_default_state_dir)] = Field(
        default=None, validate_default=True
    )
    rules: Annotated[tuple[str, ...], AfterValidator(_rules_relative)] = Field(
        default=("rules/*.yaml",), validate_default=True
    )
    http: HttpConfig | None = None
    log: LogConfig = LogConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    accounts: tuple[AccountConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()

    @field_validator("accounts", "sinks")
    @classmethod
    def _unique_names(
        cls,
        items: tuple[AccountConfig | MqttSinkConfig | WebhookSinkConfig, ...],
        info: ValidationInfo,
    ) -> tuple[Any, ...]:
        what = "account" if info.field_name == "accounts" else "sink"
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
        for sink in self.sinks:
            found.extend(_url_secrets(sink.url))
            if isinstance(sink, WebhookSinkConfig):
                found.extend(sink.headers.values())
                if sink.secret is not None:
                    found.append(sink.secret)
        return tuple(found)


def _url_secrets(url: Secret) -> list[Secret]:
    """The parts of a sink URL that are secret: the password, and the path and query
    (webhook URLs carry their token there). Scheme, user and host stay readable in logs."""
    parts = urlsplit(url.reveal())
    found = [Secret(parts.password)] if parts.password else []
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(tail) > 1:
        found.append(Secret(tail))
    return found
