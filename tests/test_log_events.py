"""docs/logs.md lists every event the code logs, at the levels and with the fields it logs.

The code is read, not run: every call of a structlog logger's methods in balwatch/, with its
event id (a snake_case literal), its level and its keyword fields. A logger method may only be
called where it is named (``log.warning(...)``, or ``(log.warning if x else log.debug)(...)``),
so no event can hide behind a variable.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "logs.md"
LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error"}
LEVELS["exception"] = "error"  # error, with the traceback
EVENT_ID = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass
class Logged:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    where: list[str] = field(default_factory=list)


def _loggers(tree: ast.Module) -> set[str]:
    """Module-level names bound to ``structlog.get_logger(...)``."""
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "structlog.get_logger"
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _methods(node: ast.expr, loggers: set[str]) -> list[ast.Attribute]:
    """The logger methods ``node`` picks from: ``log.x``, or an ``a if c else b`` of them."""
    if isinstance(node, ast.IfExp):
        return _methods(node.body, loggers) + _methods(node.orelse, loggers)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in loggers
        and node.attr in LEVELS
    ):
        return [node]
    return []


def logged_events() -> tuple[dict[str, Logged], list[str]]:
    """Every event the code logs, and the calls this reading cannot vouch for."""
    events: dict[str, Logged] = defaultdict(Logged)
    problems: list[str] = []
    for path in sorted((ROOT / "balwatch").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        loggers = _loggers(tree)
        called: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            methods = _methods(node.func, loggers)
            if not methods:
                continue
            called.update(id(m) for m in methods)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                problems.append(f"{where}: the event id is not a literal")
                continue
            if not EVENT_ID.fullmatch(first.value):
                problems.append(f"{where}: event {first.value!r} is not a snake_case id")
            entry = events[first.value]
            entry.levels.update(LEVELS[m.attr] for m in methods)
            entry.fields.update(k.arg for k in node.keywords if k.arg is not None)
            entry.where.append(where)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _methods(node, loggers)
                and id(node) not in called
            ):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                problems.append(f"{where}: a logger method used other than by calling it")
    return events, problems


def documented_events() -> dict[str, tuple[set[str], str]]:
    """docs/logs.md's table: event -> (levels, the fields cell)."""
    rows: dict[str, tuple[set[str], str]] = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z0-9_]+`", cells[0]):
            levels = {level.strip() for level in cells[1].split(",")}
            rows[cells[0].strip("`")] = (levels, cells[3])
    return rows


def test_the_code_logs_snake_case_literal_events_only() -> None:
    events, problems = logged_events()
    assert len(events) > 20, "the reading of the code found too few events"
    assert problems == []


def test_the_log_page_lists_every_event_with_its_levels_and_fields() -> None:
    events, _ = logged_events()
    documented = documented_events()
    assert sorted(set(events) - set(documented)) == [], "logged but not in docs/logs.md"
    assert sorted(set(documented) - set(events)) == [], "in docs/logs.md but never logged"
    for name, entry in events.items():
        levels, fields = documented[name]
        assert levels == entry.levels, (name, entry.where)
        missing = sorted(f for f in entry.fields if f"`{f}`" not in fields)
        assert missing == [], f"{name}: fields not in docs/logs.md: {missing} ({entry.where})"
