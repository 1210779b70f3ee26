"""The config file: ``load_config`` reads and validates it, reporting every problem at once.

``load_yaml`` and ``YamlDocument`` are shared with the rule-file loader.
"""

from balwatch.config.load import load_config
from balwatch.config.model import (
    AccountConfig,
    Config,
    DefaultsConfig,
    HttpConfig,
    LogConfig,
    MqttSinkConfig,
    SinkConfig,
    WebhookSinkConfig,
    redact_url,
)
from balwatch.config.yamlsource import Position, YamlDocument, YamlPath, load_yaml

__all__ = [
    "AccountConfig",
    "Config",
    "DefaultsConfig",
    "HttpConfig",
    "LogConfig",
    "MqttSinkConfig",
    "Position",
    "SinkConfig",
    "WebhookSinkConfig",
    "YamlDocument",
    "YamlPath",
    "load_config",
    "load_yaml",
    "redact_url",
]
