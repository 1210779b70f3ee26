"""Load a YAML file into plain data plus an index of where every key and value sits.

Validation happens on plain data, but an error must point into the file: the index maps a
path such as ``("accounts", 0, "credentials", "api_key")`` to its 1-based line and column.
Every YAML file balwatch reads (config, rules, rule tests, simulator scenarios) comes through
:func:`load_yaml`, so each is guarded the same way against hostile input: alias bombs, files
that are not the kind expected (their content is never quoted back), and descriptor
exhaustion, which is not a problem of the file.
"""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
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
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
# What aliases may add to a document, in values: an alias repeats its anchor's whole value,
# and nine levels of nine aliases make 387 million from 450 bytes (a "billion laughs").
# Every walk over the data (substitution, validation) would expand them. Anchors that share
# defaults between a few hundred accounts stay far below.
MAX_ALIAS_VALUES: Final = 100_000
# Open files, system-wide or for the process, used up: a condition of the machine, not of the
# file. Callers retry later instead of reporting the file as broken.
OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE})


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to open a file because no descriptor was left."""
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS


@dataclass(frozen=True, slots=True)
class FileKind:
    """What a file is meant to be, by its top-level keys.

    A file whose top level is not a mapping, or has none of these keys (nor a near miss of
    one), is some other file (``rules: [/etc/passwd]``): it gets one problem saying so and
    nothing of its content is quoted.
    """

    name: str  # "rule file"
    keys: tuple[str, ...]


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


def load_yaml(
    path: str | Path, kind: FileKind | None = None, *, decimal_floats: bool = False
) -> YamlDocument:
    """Parse the single YAML document in ``path``; raises ConfigError with its position.

    ``kind``: what the file must look like at its top level (None: anything).
    ``decimal_floats``: YAML floats become :class:`~decimal.Decimal` from their text, so an
    amount keeps every digit. A file that cannot be opened for lack of descriptors raises
    that OSError (see :func:`out_of_descriptors`), not a ConfigError.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if out_of_descriptors(exc):
            raise
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            [Problem(file, 1, 1, f"cannot read file: {reason}", kind="unreadable file")]
        ) from None

    try:
        data, index = _parse(file, text, kind, decimal_floats)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(file, text, exc)]) from None
    except ReaderError as exc:
        raise ConfigError([_reader_problem(file, text, exc)]) from None
    if index.problems:
        raise ConfigError(index.problems)
    return YamlDocument(file, data, index.values, index.keys)


class _DecimalLoader(yaml.SafeLoader):
    """SafeLoader that turns YAML floats into Decimal from their source text."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal | str:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    try:
        return Decimal(text)
    except InvalidOperation:  # .inf, .nan: kept as written
        return text


_DecimalLoader.add_constructor(_FLOAT_TAG, _construct_decimal)


def _parse(
    file: str, text: str, kind: FileKind | None, decimal_floats: bool
) -> tuple[Any, _Indexer]:
    index = _Indexer(file)
    loader = (_DecimalLoader if decimal_floats else _Loader)(text)
    try:
        try:
            root = loader.get_single_node()
        except ValueError:
            # pyyaml's scanner calls chr() on a "\U" escape without checking the range.
            mark = loader.get_mark()
            message = 'a "\\U" escape beyond the last Unicode character (\\U0010FFFF)'
            # The scanner stopped at the escape's hex digits; the escape starts 2 before.
            index.problems.append(
                Problem(file, mark.line + 1, max(1, mark.column - 1), message, kind="invalid YAML")
            )
            return None, index
        if root is None:
            return None, index
        if kind is not None and _foreign(root, kind):
            index.problems.append(_foreign_problem(file, kind))
            return None, index
        try:
            index.walk(root, ())
            if not index.problems:
                index.problems += _alias_problems(file, root)
            # Construction is skipped when keys repeat: the error is reported either way.
            if index.problems:
                return None, index
            return loader.construct_document(root), index
        except RecursionError:
            line, column = _mark(root)
            index.problems.append(
                Problem(file, line, column, "nested too deeply", kind="invalid YAML")
            )
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
                    kind="invalid YAML",
                )
            )
            return None, index
    finally:
        loader.dispose()


def _mark(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _foreign(root: Node, kind: FileKind) -> bool:
    if not isinstance(root, MappingNode):
        return True
    keys = [k.value for k, _ in root.value if isinstance(k, ScalarNode)]
    # A near miss (`rule:`) is the user's own file with a typo: validation names it.
    return bool(keys) and not any(
        key in kind.keys or difflib.get_close_matches(key, kind.keys, n=1, cutoff=0.75)
        for key in keys
    )


def _foreign_problem(file: str, kind: FileKind) -> Problem:
    expected = ", ".join(f"{key}:" for key in kind.keys)
    return Problem(
        file,
        1,
        1,
        f"not a {kind.name}: expected a mapping with some of {expected} at the top level",
        kind=f"not a {kind.name}",
    )


def _alias_problems(file: str, root: Node) -> list[Problem]:
    """An alias bomb: the values aliases add when the data is walked, beyond the limit."""
    sizes: dict[int, int] = {}
    order: list[Node] = []  # each node once, children before parents

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # counts a cycle through a merge key once; construction refuses it
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        sizes[id(node)] = total
        order.append(node)
        return total

    added = size(root) - len(sizes)
    if added <= MAX_ALIAS_VALUES:
        return []
    # The first value, in the file's order, that is too big: where the repetition starts.
    first = next(node for node in order if sizes[id(node)] > MAX_ALIAS_VALUES)
    line, column = _mark(first)
    return [
        Problem(
            file,
            line,
            column,
            f"aliases expand this value to {sizes[id(first)]:,} values, beyond the "
            f"{MAX_ALIAS_VALUES:,} that aliases may add to a file; repeat less through "
            "anchors (&) and aliases (*)",
            kind="alias bomb",
        )
    ]


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
                    kind="invalid YAML",
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
                        kind="duplicate key",
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
    return Problem(
        file,
        line,
        column,
        f"character U+{code:04X} is not allowed in YAML",
        kind="not a text file" if code == 0 else "invalid YAML",
    )


def _syntax_problem(file: str, text: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:  # pyyaml always sets one of them; kept so the type is honest
        return Problem(file, 1, 1, _syntax_message(exc), kind="invalid YAML")
    lines = text.split("\n")
    line_text = lines[mark.line] if mark.line < len(lines) else ""
    line, column = mark.line + 1, mark.column + 1
    message = _syntax_message(exc)
    if line_text[mark.column : mark.column + 1] == "\t":
        indent = len(line_text) - len(line_text.lstrip(" \t"))
        message = (
            "tab character in indentation; YAML needs spaces"
            if mark.column < indent
            else "tab character here; YAML separates with spaces"
        )
    return Problem(file, line, column, message, kind="invalid YAML")


# pyyaml quotes what it found (`found undefined alias 'x'`, a character, a tag); the file may
# be any file (`rules: [/etc/shadow]`), so only its own token names (`'<block end>'`, `'{'`)
# stay.
_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN_NAME: Final = re.compile(r"'(<[a-z ]+>|[][{},?:-])'")


def _unquote(match: re.Match[str]) -> str:
    return match.group() if _TOKEN_NAME.fullmatch(match.group()) else "it"


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """pyyaml's parser vocabulary, translated into what to fix; nothing of the file quoted."""
    problem = _QUOTED.sub(_unquote, exc.problem or "")
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
        return "unsupported YAML tag here; balwatch reads plain YAML values"
    return (
        f"invalid YAML: {problem} ({exc.context}{at})"
        if exc.context
        else f"invalid YAML: {problem}"
    )
