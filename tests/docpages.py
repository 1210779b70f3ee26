"""Reading the pages of docs/ as the tests that hold them to the code do: fenced blocks,
tables, and the keys a JSON Schema or a pydantic model defines.

A page's tables of keys share one layout, ``| key | type | default | allowed | meaning |``,
with the key as a code span in the first cell; examples are fenced blocks, and a YAML
example that stands for a file says which in its first line: ``# file: NAME``.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from balwatch.config.model import DurationRange
from balwatch.durations import format_duration

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
KEY_HEADER = ("key", "type", "default", "allowed", "meaning")
_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_FILE_LINE = re.compile(r"#\s*file:\s*(?P<name>\S+)")
_SPAN = re.compile(r"`([^`]+)`")


def page(name: str) -> str:
    return (DOCS / name).read_text()


@dataclass(frozen=True)
class Block:
    """A fenced block: its info string (``yaml``), its text, the page line it starts on."""

    info: str
    code: str
    line: int

    @property
    def file(self) -> str | None:
        """The file a YAML example stands for (``# file: NAME`` on its first line)."""
        first = self.code.split("\n", 1)[0]
        match = _FILE_LINE.fullmatch(first.strip())
        return match.group("name") if match else None


def blocks(text: str, info: str | None = None) -> list[Block]:
    """Every fenced block of ``text``, or those whose language is ``info``."""
    found = [
        Block(m.group("info").strip(), m.group("code"), text.count("\n", 0, m.start()) + 1)
        for m in _FENCE.finditer(text)
    ]
    return [b for b in found if info is None or b.info.split(" ")[0] == info]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(text: str) -> Iterator[tuple[tuple[str, ...], list[list[str]]]]:
    """(header, rows) of every Markdown table in ``text``, outside fenced blocks."""
    text = _FENCE.sub("", text)
    lines = text.split("\n")
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header = tuple(_cells(lines[i]))
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield header, rows
        else:
            i += 1


def spans(cell: str) -> list[str]:
    """The code spans of a cell: ``| `a`, `b` |`` gives ``["a", "b"]``."""
    return _SPAN.findall(cell)


def key_rows(text: str) -> dict[str, list[dict[str, str]]]:
    """Rows of the page's key tables by key (a key may be listed in several tables)."""
    rows: dict[str, list[dict[str, str]]] = {}
    for header, body in tables(text):
        if header != KEY_HEADER:
            continue
        for cells in body:
            assert len(cells) == len(KEY_HEADER), f"a row of {len(cells)} cells: {cells}"
            key = spans(cells[0])
            assert len(key) == 1 and cells[0] == f"`{key[0]}`", f"key cell {cells[0]!r}"
            rows.setdefault(key[0], []).append(dict(zip(KEY_HEADER, cells, strict=True)))
    return rows


# --------------------------------------------------------------------------- JSON Schema


@dataclass(frozen=True)
class SchemaKey:
    """One key a schema allows, at a path like ``accounts[].options.id``."""

    path: str
    node: Mapping[str, Any]
    required: bool

    @property
    def default(self) -> object:
        return self.node.get("default")

    @property
    def enum(self) -> list[object]:
        values: list[object] = []
        for shape in (self.node, *self.node.get("anyOf", ())):
            values += shape.get("enum", [])
            if "const" in shape:
                values.append(shape["const"])
        return values


def _deref(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def schema_keys(schema: Mapping[str, Any]) -> list[SchemaKey]:
    """Every key of ``schema``, depth first; a list's items are under ``name[]``.

    Mappings of free keys (labels, credentials) are not descended. The options of each
    exchange (``allOf`` of ``if exchange``/``then options``) are keys of ``options``. A
    definition reached a second time (the same shape under two keys) is not listed again.
    """
    defs = schema.get("$defs", {})
    seen: set[str] = set()
    keys: list[SchemaKey] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        ref = node.get("$ref")
        if ref is not None:
            if ref in seen:
                return
            seen.add(ref)
            node = _deref(node, defs)
        for union in ("anyOf", "oneOf"):
            for option in node.get(union, ()):
                walk(option, path)
        if node.get("type") == "array" and "items" in node:
            walk(node["items"], f"{path}[]")
        required = set(node.get("required", ()))
        for name, child in node.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            keys.append(SchemaKey(key, child, name in required))
            walk(child, key)
        for case in node.get("allOf", ()):
            options = case.get("then", {}).get("properties", {}).get("options", {})
            for name, child in options.get("properties", {}).items():
                option_required = name in options.get("required", ())
                keys.append(SchemaKey(f"{path}.options.{name}", child, option_required))

    walk(schema, "")
    return keys


def shown(value: object) -> str:
    """A default as the page writes it, in a code span: YAML's spelling of JSON values."""
    return value if isinstance(value, str) else json.dumps(value)


def key_problems(
    keys: list[SchemaKey], ranges: Mapping[str, DurationRange], text: str, where: str
) -> list[str]:
    """What the key tables of ``text`` miss or state wrongly about ``keys``."""
    rows = key_rows(text)
    problems = []
    for key in keys:
        if key.path not in rows:
            problems.append(f"{key.path}: no row in {where}; add one to a key table there")
            continue
        cells = rows[key.path]
        defaults = [spans(row["default"]) for row in cells]
        if key.required and not any("required" in row["default"] for row in cells):
            problems.append(f"{key.path}: is required; its default cell must say so")
        has_default = not key.required and isinstance(key.default, str | bool | int | float | list)
        if has_default and not any(shown(key.default) in found for found in defaults):
            problems.append(f"{key.path}: default is `{shown(key.default)}`")
        allowed = [row["allowed"] for row in cells]
        for value in key.enum:
            if not any(str(value) in spans(cell) for cell in allowed):
                problems.append(f"{key.path}: allows `{value}`; list it in the allowed cell")
        bounded = ranges.get(key.path)
        if bounded is not None:
            low, high = format_duration(bounded.low), format_duration(bounded.high)
            if not any(f"{low} to {high}" in cell for cell in allowed):
                problems.append(f"{key.path}: allowed from {low} to {high}")
        if "minimum" in key.node and "maximum" in key.node:
            span = f"{key.node['minimum']} to {key.node['maximum']}"
            if not any(span in cell for cell in allowed):
                problems.append(f"{key.path}: allowed from {span}")
    known = {key.path for key in keys}
    problems += [f"{path}: in {where} but not a key" for path in rows if path not in known]
    return problems


# --------------------------------------------------------------------------- models


def duration_ranges(model: type[BaseModel], path: str = "") -> dict[str, DurationRange]:
    """The range of every duration key of ``model`` and the models below it, by path."""
    found: dict[str, DurationRange] = {}
    for name, field in model.model_fields.items():
        key = f"{path}.{field.alias or name}" if path else field.alias or name
        for meta in field.metadata:
            if isinstance(meta, DurationRange):
                found[key] = meta
        for inner, suffix in _inner(field.annotation, ""):
            if isinstance(inner, DurationRange):
                found[key + suffix] = inner
            elif isinstance(inner, type) and issubclass(inner, BaseModel):
                found.update(duration_ranges(inner, key + suffix))
    return found


def _inner(annotation: object, suffix: str) -> Iterator[tuple[object, str]]:
    """Models and duration ranges inside a type, with ``[]`` added for each list level."""
    if isinstance(annotation, type):
        yield annotation, suffix
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        for meta in getattr(annotation, "__metadata__", ()):
            if isinstance(meta, DurationRange):
                yield meta, suffix
        yield from _inner(args[0], suffix)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _inner(arg, suffix)
    elif origin in (tuple, list):
        for arg in args:
            if arg is not Ellipsis:
                yield from _inner(arg, suffix + "[]")
