"""Read ``balwatch.yaml``: parse, substitute, validate, and report every problem at once.

Messages never quote a substituted value (it may be a secret): see
:mod:`balwatch.config.problems`, which words and positions them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from balwatch.config.model import (
    PRICE_SOURCE_TYPES,
    SINK_TYPES,
    AccountConfig,
    Config,
    ConfigContext,
    DefaultsConfig,
    HttpConfig,
    LogConfig,
    StateSettings,
    adapter_for,
)
from balwatch.config.problems import EXPECTED, Reporter, file_kind, value_at
from balwatch.config.risks import risky_settings
from balwatch.config.substitute import Substituted, substitute
from balwatch.config.yamlsource import FileKind, YamlDocument, YamlPath, load_yaml
from balwatch.errors import ConfigError, Problem

CONFIG_FILE: Final[FileKind] = file_kind("config file", Config)
_SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    "http": HttpConfig,
    "log": LogConfig,
    "defaults": DefaultsConfig,
}

# Where a container was expected, a string found there may be a secret written in the
# wrong place (`headers: "Authorization: ..."`): name its type, not its text.
_CONTAINER_TYPES: Final = frozenset(
    {"dict_type", "model_type", "model_attributes_type", "list_type", "tuple_type"}
)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """The validated config in ``path``; raises ConfigError listing every problem found.

    ``environ`` (default ``os.environ``) feeds ``${VAR}``, ``$CREDENTIALS_DIRECTORY`` and
    the ``$STATE_DIRECTORY`` default.
    """
    return load_config_with_warnings(path, environ)[0]


def load_config_with_warnings(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[Config, list[Problem]]:
    """:func:`load_config`, and the warnings about its risky settings
    (:mod:`balwatch.config.risks`)."""
    environ = os.environ if environ is None else environ
    doc = load_yaml(path, CONFIG_FILE)
    substituted = substitute(doc, environ)
    problems = list(substituted.problems)
    context = ConfigContext(base_dir=Path(path).absolute().parent, environ=environ)
    try:
        config = Config.model_validate(substituted.data, context=context)
    except ValidationError as exc:
        problems += _Reporter(doc, substituted).problems(exc)
    else:
        if not problems:
            return config, risky_settings(doc, substituted, config)
    # Raised outside the `except`: the ValidationError holds input values and must not
    # ride along as __context__ into a traceback.
    unique = dict.fromkeys(problems)
    raise ConfigError(sorted(unique, key=lambda problem: (problem.line, problem.column)))


def load_state_settings(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> StateSettings:
    """Where the state of the config in ``path`` lives; only those keys are substituted and
    checked (ConfigError for theirs), so credentials need not be at hand."""
    environ = os.environ if environ is None else environ
    doc = load_yaml(path, CONFIG_FILE)
    keys = StateSettings.model_fields
    data = doc.data if isinstance(doc.data, dict) else {}
    doc = dataclasses.replace(doc, data={k: v for k, v in data.items() if k in keys})
    substituted = substitute(doc, environ)
    problems = list(substituted.problems)
    context = ConfigContext(base_dir=Path(path).absolute().parent, environ=environ)
    try:
        settings = StateSettings.model_validate(substituted.data, context=context)
    except ValidationError as exc:
        problems += _Reporter(doc, substituted).problems(exc)
    if problems:
        raise ConfigError(problems)
    return settings


class _Reporter(Reporter):
    """Names the config's mappings by where they are, and shows substituted values as written."""

    expected = EXPECTED
    by_type = _CONTAINER_TYPES
    tag_key = "type"

    def __init__(self, doc: YamlDocument, substituted: Substituted) -> None:
        super().__init__(doc, Config, data=substituted.data)
        self.substituted = substituted

    def skip(self, error: ErrorDetails, errors: list[ErrorDetails], path: YamlPath) -> bool:
        # The failed reference is reported; its leftover text is noise.
        return path in self.substituted.failed

    def message(self, error: ErrorDetails, path: YamlPath, on_key: bool) -> str:
        kind = error["type"]
        what, types = (
            ("price source", PRICE_SOURCE_TYPES)
            if path[:1] == ("prices",)
            else ("sink", SINK_TYPES)
        )
        if kind == "union_tag_not_found":
            return f"missing required key 'type' in {what}; expected one of: {', '.join(types)}"
        if kind == "union_tag_invalid":
            return f"expected {what} type {' or '.join(types)}, got {self.shown(path)}"
        return super().message(error, path, on_key)

    def section(self, path: YamlPath) -> tuple[str, type[BaseModel] | None]:
        match path:
            case ():
                return "the config", Config
            case (str() as name,) if name in _SECTIONS:
                return name, _SECTIONS[name]
            case ("accounts", int()):
                return "account", AccountConfig
            case ("accounts", int(), "options"):
                exchange = value_at(self.data, (*path[:-1], "exchange"))
                adapter = adapter_for(exchange)
                if adapter is None:
                    return "options", None
                return f"options for {adapter.name}", adapter.options_model
            case ("sinks", int()):
                kind = value_at(self.data, (*path, "type"))
                model = SINK_TYPES.get(kind) if isinstance(kind, str) else None
                return (f"{kind} sink", model) if model else ("sink", None)
        return ".".join(str(part) for part in path), None

    def shown(self, path: YamlPath) -> str:
        """The value at ``path`` for a message: its text in the file, never substituted."""
        if path in self.substituted.paths:
            return f"{value_at(self.doc.data, path)!r} (after substitution)"
        return super().shown(path)
