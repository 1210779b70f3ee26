"""docs/architecture.md names every module with its job, and its layers are the ones
``lint-imports`` enforces: a new module, or a module moved between layers, fails here until
the page says where it belongs."""

from __future__ import annotations

import re
import tomllib

from tests.docpages import ROOT, page, spans, tables

PAGE = "architecture.md"
PACKAGE = ROOT / "balwatch"


def test_every_module_and_package_has_a_job_on_the_page() -> None:
    named = {
        span
        for header, rows in tables(page(PAGE))
        if header == ("module", "job")
        for row in rows
        if row[1]
        for span in spans(row[0])[:1]
    }
    modules = {
        str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"
    }
    packages = {f"{path.parent.relative_to(ROOT)}/" for path in PACKAGE.rglob("__init__.py")} - {
        "balwatch/"
    }
    there = modules | packages
    assert named == there, (
        f"without a job on docs/{PAGE}: {sorted(there - named)}; "
        f"named but not there: {sorted(named - there)}"
    )


def test_the_layers_are_the_import_contracts() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = (c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    declared = [set(re.split(r"\s*[:|]\s*", layer)) for layer in contract["layers"]]
    (shown,) = (rows for header, rows in tables(page(PAGE)) if header == ("layer", "modules"))
    assert [set(spans(row[1])) for row in shown] == declared
