"""Read ``balwatch.yaml``: parse, substitute, validate, and report every problem at once.

pydantic's own messages quote the input value, which may be a secret or a substituted
value, so each message here is rebuilt from the error's type and context instead.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from balwatch.config.model import (
    ERROR_TYPE,
    SINK_TYPES,
    AccountConfig,
    Config,
    ConfigContext,
    Defaults,
    HttpConfig,
    LogConfig,
    adapter_for,
)
from balwatch.config.substitute import Substituted, substitute
from balwatch.config.yamlsource import YamlDocument, YamlPath, load_yaml
from balwatch.errors import ConfigError, Problem

_SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    "http": HttpConfig,
    "log": LogConfig,
    "defaults": Defaults,
}

# What a pydantic error type expected, in the words of the file's author.
_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
    "path_type": "a file path",
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
    environ = os.environ if environ is None else environ
    doc = load_yaml(path)
    substituted = substitute(doc, environ)
    problems = list(substituted.problems)
    context = ConfigContext(base_dir=Path(path).absolute().parent, environ=environ)
    try:
        config = Config.model_validate(substituted.data, context=context)
    except ValidationError as exc:
        problems += _Reporter(doc, substituted).problems(exc)
    else:
        if not problems:
            return config
    # Raised outside the `except`: the ValidationError holds input values and must not
    # ride along as __context__ into a traceback.
    unique = dict.fromkeys(problems)
    raise ConfigError(sorted(unique, key=lambda problem: (problem.line, problem.column)))


class _Reporter:
    """Turns pydantic errors into Problems positioned in the YAML file."""

    def __init__(self, doc: YamlDocument, substituted: Substituted) -> None:
        self.doc = doc
        self.substituted = substituted
        self.data = substituted.data

    def problems(self, exc: ValidationError) -> list[Problem]:
        found: list[Problem] = []
        for error in exc.errors(include_url=False):
            path, on_key = _locate(error["loc"], self.data)
            if path in self.substituted.failed:
                continue  # the failed reference is reported; its leftover text is noise
            kind = error["type"]
            if kind == "union_tag_invalid":
                path = (*path, "type")
            message = self._message(error, path)
            line, column = self.doc.position(path, key=on_key or kind == "extra_forbidden")
            found.append(Problem(self.doc.file, line, column, message))
        return found

    def _message(self, error: ErrorDetails, path: YamlPath) -> str:
        kind = error["type"]
        ctx = error.get("ctx", {})
        if kind == "missing":
            return f"missing required key {error['loc'][-1]!r} in {self._section(path)[0]}"
        if kind == "extra_forbidden":
            return self._unknown_key(path)
        if kind == "union_tag_not_found":
            return f"missing required key 'type' in sink; expected one of: {', '.join(SINK_TYPES)}"
        if kind == "union_tag_invalid":
            return f"expected sink type {' or '.join(SINK_TYPES)}, got {self._shown(path)}"
        if kind == "literal_error":
            return f"expected {ctx['expected']}, got {self._shown(path)}"
        if kind in _CONTAINER_TYPES:
            return f"expected {_EXPECTED[kind]}, got {_type_name(_get(self.data, path))}"
        if kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]}, got {self._shown(path)}"
            if kind == "string_type" and isinstance(error["input"], int | float):
                message += "; quote it to keep it as text"  # YAML made a number or bool of it
            return message
        if kind == ERROR_TYPE:
            return error["msg"].replace("{input}", self._shown(path))
        # Any other error (say, from an adapter's options model) words its own message.
        return error["msg"].removeprefix("Value error, ")

    def _unknown_key(self, path: YamlPath) -> str:
        key = path[-1]
        where, model = self._section(path[:-1])
        message = f"unknown key {key!r} in {where}"
        if model is None:
            return message
        fields = list(model.model_fields)
        close = difflib.get_close_matches(str(key), fields, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return f"{message}; expected one of: {', '.join(fields)}"

    def _section(self, path: YamlPath) -> tuple[str, type[BaseModel] | None]:
        """A name for the mapping at ``path`` and the model that validates it."""
        match path:
            case ():
                return "the config", Config
            case (str() as name,) if name in _SECTIONS:
                return name, _SECTIONS[name]
            case ("accounts", int()):
                return "account", AccountConfig
            case ("accounts", int(), "options"):
                exchange = _get(self.data, (*path[:-1], "exchange"))
                adapter = adapter_for(exchange)
                if adapter is None:
                    return "options", None
                return f"options for {adapter.name}", adapter.options_model
            case ("sinks", int()):
                kind = _get(self.data, (*path, "type"))
                model = SINK_TYPES.get(kind) if isinstance(kind, str) else None
                return (f"{kind} sink", model) if model else ("sink", None)
        return ".".join(str(part) for part in path), None

    def _shown(self, path: YamlPath) -> str:
        """The value at ``path`` for a message: its text in the file, never substituted."""
        if path in self.substituted.paths:
            return f"{_get(self.doc.data, path)!r} (after substitution)"
        return _describe(_get(self.data, path))


def _locate(loc: tuple[int | str, ...], data: Any) -> tuple[YamlPath, bool]:
    """The YAML path of a pydantic location, and whether the error is about the key.

    pydantic adds parts that are not in the data: a discriminated union's tag, the
    ``[key]`` marker of a mapping key, and the name of a key that is missing. They are
    skipped, so a missing key lands on the mapping that lacks it.
    """
    path: list[object] = []
    node = data
    on_key = False
    for part in loc:
        if part == "[key]":
            on_key = True
        elif _has(node, part):
            node = node[part]
            path.append(part)
    return tuple(path), on_key


def _get(data: Any, path: YamlPath) -> Any:
    """The value at ``path``, or None where the file has none."""
    for part in path:
        if not _has(data, part):
            return None
        data = data[part]
    return data


def _has(node: Any, part: object) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _describe(value: object) -> str:
    """A scalar as written in YAML; a container by its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return _type_name(value)


def _type_name(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"  # YAML dates and timestamps
