"""docs/configuration.md documents every key of the config file as the code defines it.

The keys, defaults and allowed values come from the config's JSON Schema (``balwatch
schema``), the duration ranges from the models: a key added to the config without a row in
the page, a row for a key that no longer exists, a default or a range that the page states
wrongly, and an example the loader refuses, each fail here with what to write.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from balwatch.adapters import REGISTRY
from balwatch.config.load import load_config_with_warnings
from balwatch.config.model import Config
from balwatch.schema import schema
from tests.docpages import (
    blocks,
    duration_ranges,
    key_problems,
    page,
    schema_keys,
    spans,
    tables,
)

PAGE = "configuration.md"


def test_every_config_key_has_a_row_with_its_default_and_allowed_values() -> None:
    keys = schema_keys(schema("config"))
    problems = key_problems(keys, duration_ranges(Config), page(PAGE), f"docs/{PAGE}")
    assert not problems, "docs/configuration.md is behind the config:\n" + "\n".join(problems)


def test_every_exchange_has_its_credentials_options_and_base_url() -> None:
    found = {
        spans(row[0])[0]: row
        for header, rows in tables(page(PAGE))
        if header[0] == "exchange"
        for row in rows
    }
    assert sorted(found) == sorted(REGISTRY)
    for name, adapter in REGISTRY.items():
        _, credentials, options, base_url = found[name]
        assert set(spans(credentials)) >= adapter.credential_keys(), name
        assert set(spans(options)) >= set(adapter.options_model.model_fields), name
        if adapter.default_base_url is None:
            assert "required" in base_url, name
        elif adapter.default_base_url:
            assert adapter.default_base_url in spans(base_url), name


def test_every_example_is_a_config_that_loads_without_warnings(tmp_path: Path) -> None:
    examples = blocks(page(PAGE), "yaml")
    assert len(examples) >= 5
    for index, example in enumerate(examples):
        assert example.file == "balwatch.yaml", f"line {example.line}: `# file: balwatch.yaml`"
        folder = tmp_path / str(index)
        (folder / "credentials").mkdir(parents=True)
        environ = {"CREDENTIALS_DIRECTORY": str(folder / "credentials")}
        for kind, name in re.findall(r"\$\{(?:(file|cred):)?([^}]+)\}", example.code):
            if kind == "file":
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text("from-a-file\n")
            elif kind == "cred":
                (folder / "credentials" / name).write_text("from-a-credential")
            else:
                url = name.endswith("_URL")
                environ[name] = f"https://example.invalid/{name}" if url else "from-the-env"
        config_file = folder / "balwatch.yaml"
        config_file.write_text(example.code)
        try:
            _, warnings = load_config_with_warnings(config_file, environ)
        except Exception as exc:  # the problems, with the page's line for each block
            pytest.fail(f"docs/{PAGE}, example at line {example.line}:\n{exc}")
        assert not warnings, f"example at line {example.line}: {warnings}"
