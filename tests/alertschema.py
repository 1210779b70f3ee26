"""Checks that a document is an alert as balwatch publishes it (``balwatch schema --alert``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

from balwatch.alert import JSON_KEYS, JSON_SCHEMA

Draft202012Validator.check_schema(JSON_SCHEMA)
_VALIDATOR = Draft202012Validator(JSON_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(doc: Mapping[str, Any]) -> list[str]:
    """Why ``doc`` is not a valid alert document: schema errors, then keys it should not
    have (the schema lets consumers accept keys added later; balwatch adds none unlisted)."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}"
        for e in _VALIDATOR.iter_errors(doc)
    ]
    errors += [f"{key}: not an alert key" for key in doc if key not in JSON_KEYS]
    return errors
