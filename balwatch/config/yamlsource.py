"""Load a YAML file into plain data plus an index of where every key and value sits.

Validation happens on plain data, but an error must point into the file: the index maps a
path such as ``("accounts", 0, "credentials", "api_key")`` to its 1-based line and column.
Shared by the config loader and the rule-file loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeAlias

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from balwatch.errors import ConfigError, Problem

# Mapping keys and list indexes from the root down to one value.
YamlPath: TypeAlias = tuple[object, ...]

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class Position(NamedTuple):
    line: int
    column: int


_START: Final = Position(1, 1)


class YamlFloat(float):
    """A YAML float that keeps the text it was written as: a decimal field (a price) reads
    its exact digits from ``text``; everything else sees a float."""

    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        number = super().__new__(cls, value)
        number.text = text
        return number


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats are :class:`YamlFloat`."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    value = loader.construct_yaml_float(node)  # type: ignore[arg-type]
    return YamlFloat(value, str(node.value))


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """One parsed file: its data and where each part of it was written."""

    file: str
    data: Any
    _values: Mapping[YamlPath, Position]
    _keys: Mapping[YamlPath, Position]

    def position(self, path: YamlPath, *, key: bool = False) -> Position:
        """Where ``path`` was written: its key with ``key=True``, else its value.

        A path that is not in the file (a missing key, a default) falls back to the nearest
        ancestor that is, so every error still lands somewhere sensible.
        """
        if key and path in self._keys:
            return self._keys[path]
        for end in range(len(path), -1, -1):
            found = self._values.get(path[:end])
            if found is not None:
                return found
        return _START


def load_yaml(path: str | Path) -> YamlDocument:
    """Parse the single YAML document in ``path``; raises ConfigError with its position."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([Problem(file, 1, 1, f"cannot read file: {reason}")]) from None

    try:
        data, index = _parse(file, text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(file, text, exc)]) from None
    except ReaderError as exc:
        raise ConfigError([_reader_problem(file, text, exc)]) from None
    if index.problems:
        raise ConfigError(index.problems)
    return YamlDocument(file, data, index.values, index.keys)


def _parse(file: str, text: str) -> tuple[Any, _Indexer]:
    index = _Indexer(file)
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except ValueError:
            # pyyaml's scanner calls chr() on a "\U" escape without checking the range.
            mark = loader.get_mark()
            message = 'a "\\U" escape beyond the last Unicode character (\\U0010FFFF)'
            # The scanner stopped at the escape's hex digits; the escape starts 2 before.
            index.problems.append(Problem(file, mark.line + 1, max(1, mark.column - 1), message))
            return None, index
        if root is None:
            return None, index
        try:
            index.walk(root, ())
            # Construction is skipped when keys repeat: the error is reported either way.
            if index.problems:
                return None, index
            return loader.construct_document(root), index
        except RecursionError:
            line, column = _mark(root)
            index.problems.append(Problem(file, line, column, "nested too deeply"))
            return None, index
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            # pyyaml's constructors raise these, without a position, for explicitly tagged
            # junk (`!!float ""`) and impossible dates (`2026-02-30`).
            line, column = _mark(root)
            index.problems.append(
                Problem(
                    file,
                    line,
                    column,
                    f"a value cannot be read as its type ({type(exc).__name__}): an "
                    "impossible date, or an explicit tag such as !!float on the wrong text?",
                )
            )
            return None, index
    finally:
        loader.dispose()


def _mark(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


class _Indexer:
    """Records positions and finds duplicate keys in one walk over the composed nodes.

    Runs before construction: the constructor rewrites merge keys (``<<``) in place, and
    an override of a merged key is legal while a repeated key is not.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[YamlPath, Position] = {}
        self.keys: dict[YamlPath, Position] = {}
        self.problems: list[Problem] = []
        # Scalar keys are built with the same rules as the data, so `1:` indexes as int 1.
        self._constructor = SafeConstructor()
        # Aliases make the node graph a DAG (or a cycle): descend into each node once.
        self._seen: set[int] = set()
        self._open: set[int] = set()  # nodes on the path being walked

    def walk(self, node: Node, path: YamlPath) -> None:
        self.values[path] = _mark(node)
        if id(node) in self._open:
            # An alias inside its own anchor: the data would be infinitely deep.
            where = _mark(node)
            self.problems.append(
                Problem(
                    self.file,
                    where.line,
                    where.column,
                    "an alias refers to a value that contains it",
                )
            )
            return
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        self._open.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index))
        elif isinstance(node, MappingNode):
            self._walk_mapping(node, path)
        self._open.discard(id(node))

    def _walk_mapping(self, node: MappingNode, path: YamlPath) -> None:
        first_seen: dict[object, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # merged and complex keys have no path of their own
            key = self._constructor.construct_object(key_node)
            if key in first_seen:
                line = first_seen[key].start_mark.line + 1
                where = _mark(key_node)
                self.problems.append(
                    Problem(
                        self.file,
                        where.line,
                        where.column,
                        f"duplicate key {key!r} (first defined at line {line}); "
                        "each key may appear once in a mapping",
                    )
                )
                continue
            first_seen[key] = key_node
            self.keys[(*path, key)] = _mark(key_node)
            self.walk(value_node, (*path, key))


def _reader_problem(file: str, text: str, exc: ReaderError) -> Problem:
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    # pyyaml gives the character as its code point (an int) for text, a byte for bytes.
    char = exc.character
    code = char if isinstance(char, int) else ord(char)
    return Problem(file, line, column, f"character U+{code:04X} is not allowed in YAML")


def _syntax_problem(file: str, text: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:  # pyyaml always sets one of them; kept so the type is honest
        return Problem(file, 1, 1, f"invalid YAML: {exc.problem}")
    lines = text.split("\n")
    line_text = lines[mark.line] if mark.line < len(lines) else ""
    line, column = mark.line + 1, mark.column + 1
    if line_text[mark.column : mark.column + 1] == "\t":
        indent = len(line_text) - len(line_text.lstrip(" \t"))
        if mark.column < indent:
            return Problem(file, line, column, "tab character in indentation; YAML needs spaces")
        return Problem(file, line, column, "tab character here; YAML separates with spaces")
    return Problem(file, line, column, _syntax_message(exc))


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """pyyaml's parser vocabulary, translated into what to fix."""
    problem = exc.problem or ""
    at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
    if problem.startswith("expected <block end>"):
        return f"bad indentation: this line does not line up with the block started{at}"
    if problem == "mapping values are not allowed here":
        return "unexpected ':' here: bad indentation, or a value containing ': ' that needs quotes"
    if problem.endswith("but got '{'") and "flow" in (exc.context or ""):
        # The usual cause: an unquoted ${VAR} inside { } or [ ].
        return (
            f"unexpected '{{' in the {{ }} or [ ] started{at}; quote a value that contains ${{...}}"
        )
    if problem == "found unexpected end of stream" and "quoted scalar" in (exc.context or ""):
        return f"unterminated quoted string started{at}"
    if exc.context == "expected a single document in the stream":
        return "only one YAML document is allowed; remove the '---' separator"
    if problem.startswith("could not determine a constructor for the tag"):
        return f"unsupported YAML tag {problem.rpartition(' ')[2]}"
    return (
        f"invalid YAML: {problem} ({exc.context}{at})"
        if exc.context
        else f"invalid YAML: {problem}"
    )
