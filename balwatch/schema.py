"""JSON Schemas of the hand-edited files, for editors, and of the alert document
(``balwatch schema``).

Generated from the same pydantic models that validate the files, so they cannot drift from
what the loaders accept; the copies committed under ``rules/schema/`` are compared with
this output by a test. The schemas help an editor complete and flag keys; they are not the
validation: the loaders check more (expressions, templates, sink names, credential sets).

pydantic's output is tidied in two ways that only an editor notices: durations are floats
inside, so their defaults are written back as ``30s``; and ``options``/``credentials`` of
an account, which depend on its ``exchange``, get one ``if``/``then`` per adapter.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

from pydantic import BaseModel

from balwatch.adapters import REGISTRY
from balwatch.alert import JSON_SCHEMA as ALERT_SCHEMA
from balwatch.config.model import DURATION_PATTERN, SIZE_PATTERN, Config
from balwatch.durations import format_duration
from balwatch.rules.load import RuleFile
from balwatch.rules.ruletest import RuleTestFile
from balwatch.sizes import format_size

SchemaKind = Literal["config", "rules", "tests", "alert"]
_MODELS: Final[dict[str, type[BaseModel]]] = {
    "config": Config,
    "rules": RuleFile,
    "tests": RuleTestFile,
}
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def schema(kind: SchemaKind) -> dict[str, Any]:
    """The JSON Schema of a config file, a rule file, a rule test file, or an alert."""
    if kind == "alert":  # written out in balwatch.alert, beside the document it describes
        return dict(ALERT_SCHEMA)
    doc = _MODELS[kind].model_json_schema()
    _tidy(doc)
    if kind == "config":
        _per_exchange(doc)
    return {"$schema": _DIALECT, **doc}


def schema_text(kind: SchemaKind) -> str:
    """What ``balwatch schema`` prints and ``rules/schema/*.json`` hold, byte for byte."""
    return json.dumps(schema(kind), indent=2, ensure_ascii=False) + "\n"


def _tidy(node: object) -> None:
    """Duration and size defaults as text; no ``default: null`` where null is not allowed."""
    if isinstance(node, list):
        for item in node:
            _tidy(item)
        return
    if not isinstance(node, dict):
        return
    default = node.get("default")
    if node.get("pattern") == DURATION_PATTERN and isinstance(default, int | float):
        node["default"] = format_duration(default)
    sizes = [item.get("pattern") for item in node.get("anyOf", []) if isinstance(item, dict)]
    if SIZE_PATTERN in sizes and isinstance(default, int):
        node["default"] = format_size(default)
    if "default" in node and default is None and "anyOf" not in node:
        del node["default"]
    for value in node.values():
        _tidy(value)


def _per_exchange(doc: dict[str, Any]) -> None:
    """The exchange names, and each adapter's options and credential keys."""
    account = doc["$defs"]["AccountConfig"]
    account["properties"]["exchange"]["enum"] = sorted(REGISTRY)
    cases = []
    for name, adapter in sorted(REGISTRY.items()):
        options = adapter.options_model.model_json_schema()
        doc["$defs"].update(options.pop("$defs", {}))
        _tidy(options)
        keys = sorted(adapter.credential_keys())
        cases.append(
            {
                "if": {"properties": {"exchange": {"const": name}}, "required": ["exchange"]},
                "then": {
                    "properties": {
                        "options": options,
                        "credentials": {"propertyNames": {"enum": keys}},
                    }
                },
            }
        )
    account["allOf"] = cases
