"""Validation errors of hand-written YAML files as :class:`Problem` values at ``FILE:LINE:COL``.

Shared by the config loader, the rule loader and the rule-test loader: each validates plain
data from :func:`~balwatch.config.yamlsource.load_yaml` with pydantic, then hands the
``ValidationError`` to a :class:`Reporter`, which says what was expected and where.

pydantic's own messages quote the input value, which may be a secret or a substituted
value, so each message is rebuilt from the error's type and context instead. A validator
raises :func:`field_error`: ``{input}`` in its message becomes the value as written, and an
``offset`` puts the error on that character of the YAML scalar.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, ClassVar, Final, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from balwatch.config.yamlsource import FileKind, Position, YamlDocument, YamlPath
from balwatch.errors import Problem

_BOOLS: Final = frozenset({"true", "false"})
# Problem.kind by pydantic error type; every other is an "invalid value".
_KINDS: Final[Mapping[str, str]] = {"missing": "missing key", "extra_forbidden": "unknown key"}
# What a pydantic error type expected, in the words of a person editing a config file.
EXPECTED: Final[Mapping[str, str]] = {
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
# The pydantic error type of every error balwatch's own validators raise.
ERROR_TYPE: Final = "balwatch"


def field_error(message: str, offset: int | None = None) -> PydanticCustomError:
    """A validation error in balwatch's convention; ``offset`` points inside the text.

    ``{input}`` in ``message`` becomes the offending value; with an ``offset``, the error is
    positioned on that character of the YAML scalar (see :class:`Scalars`).
    """
    return PydanticCustomError(ERROR_TYPE, message, None if offset is None else {"offset": offset})


class Scalars:
    """Positions inside the YAML scalars of one file, for errors with an offset in the text.

    The parsed text differs from the file where YAML folds lines, strips indentation or
    unescapes quotes, but only whitespace and escapes change: so the n-th non-space
    character of the value is the n-th one from where the scalar starts (after an opening
    quote; on the line below a ``|``/``>`` header). Exact for plain and block scalars and
    for quoted ones without escapes, off by the escapes before the offset otherwise.
    """

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self._lines: list[str] | None = None  # read only when an error needs it

    def at(self, path: YamlPath, value: str, offset: int) -> Position:
        start = self.doc.position(path)
        if self._lines is None:
            self._lines = Path(self.doc.file).read_text(encoding="utf-8").split("\n")
        row, col = start.line - 1, start.column - 1
        head = self._lines[row][col : col + 1] if row < len(self._lines) else ""
        if head in ("|", ">"):
            row, col = row + 1, 0
        elif head in ("'", '"'):
            col += 1
        before = value[:offset]
        wanted = len(before) - sum(char.isspace() for char in before)
        on_char = offset < len(value) and not value[offset].isspace()
        if wanted == 0 and not on_char:
            return Position(row + 1, col + 1)
        seen, after_last = 0, Position(row + 1, col + 1)
        for r in range(row, len(self._lines)):
            line = self._lines[r]
            for c in range(col if r == row else 0, len(line)):
                if line[c].isspace():
                    continue
                if on_char and seen == wanted:
                    return Position(r + 1, c + 1)
                seen += 1
                after_last = Position(r + 1, c + 2)
                if not on_char and seen == wanted:
                    return after_last
        return after_last


def file_kind(name: str, model: type[BaseModel]) -> FileKind:
    """The :class:`FileKind` of files validated by ``model``: its keys are the top level's."""
    return FileKind(name, tuple(info.alias or key for key, info in model.model_fields.items()))


class Reporter:
    """Turns the errors of validating one YAML file against ``model`` into Problems.

    Mappings are named in messages by their model's ``title`` ("unknown key 'whn' in rule
    'low'"); a loader whose mappings are told apart otherwise overrides :meth:`section`.
    The class attributes set the wording; the methods are the points a loader may extend.
    """

    # What a pydantic error type expected, in the words of the file's author.
    expected: ClassVar[Mapping[str, str]] = {}
    # Error types whose value is named by its type only, never quoted: where a container is
    # expected, a string found there may be a secret written in the wrong place.
    by_type: ClassVar[frozenset[str]] = frozenset()
    # The key that tags the file's discriminated unions: an unknown tag is reported at it.
    tag_key: ClassVar[str | None] = None

    def __init__(
        self,
        doc: YamlDocument,
        model: type[BaseModel],
        *,
        data: Any = None,
        scalars: Scalars | None = None,
    ) -> None:
        """``data``: what was validated, when not ``doc.data`` itself (say, substituted)."""
        self.doc = doc
        self.model = model
        self.data = doc.data if data is None else data
        self.scalars = Scalars(doc) if scalars is None else scalars

    def problems(self, exc: ValidationError) -> list[Problem]:
        """Every error of ``exc``, positioned in the file, in pydantic's order."""
        errors = exc.errors(include_url=False)
        found = []
        for error in errors:
            path, on_key = yaml_path(error["loc"], self.data)
            # A key that is not text (`on:` or `yes:` read as a boolean): about the key.
            on_key = on_key or error["type"] == "invalid_key"
            if self.skip(error, errors, path) or _emptied(error, errors):
                continue
            if error["type"] == "union_tag_invalid" and self.tag_key is not None:
                path = (*path, self.tag_key)
            message = self.message(error, path, on_key)
            value = value_at(self.data, path)
            offset = (error.get("ctx") or {}).get("offset")
            if isinstance(offset, int) and isinstance(value, str) and not on_key:
                line, column = self.scalars.at(path, value, offset)
            else:
                key = on_key or error["type"] == "extra_forbidden"
                line, column = self.doc.position(path, key=key)
            found.append(
                Problem(
                    self.doc.file,
                    line,
                    column,
                    message,
                    kind=_KINDS.get(error["type"], "invalid value"),
                )
            )
        return found

    def skip(self, error: ErrorDetails, errors: list[ErrorDetails], path: YamlPath) -> bool:
        """Whether ``error`` (at ``path``) is noise next to another problem; by default none is."""
        return False

    def message(self, error: ErrorDetails, path: YamlPath, on_key: bool) -> str:
        """What is wrong at ``path``; ``on_key``: with the mapping key there, not its value."""
        kind = error["type"]
        if kind == "missing":
            return f"missing required key {error['loc'][-1]!r} in {self.section(path)[0]}"
        if kind == "extra_forbidden":
            return self._unknown_key(path)
        # A key is not in the data as a value: show the key itself.
        shown = describe(error["input"]) if on_key else self.shown(path)
        if kind == "literal_error":
            return f"expected {error['ctx']['expected']}, got {shown}"
        if kind == "too_short":
            least, actual = error["ctx"]["min_length"], error["ctx"]["actual_length"]
            return f"expected at least {least} item{'s' if least > 1 else ''}, got {actual}"
        if kind == "invalid_key" or (on_key and kind == "string_type"):
            hint = " (YAML reads on, off, yes and no as booleans)" if shown in _BOOLS else ""
            return f"expected a text key, got {shown}{hint}; quote it to keep it as text"
        if kind in self.expected:
            value = error["input"] if on_key else value_at(self.data, path)
            if kind in self.by_type:
                shown = type_name(value)
            message = f"expected {self.expected[kind]}, got {shown}"
            if kind == "string_type" and isinstance(value, int | float):
                message += "; quote it to keep it as text"  # YAML made a number or bool of it
            return message
        # balwatch's own errors (ERROR_TYPE), and any other (say, from an adapter's options
        # model) that words its own message.
        return error["msg"].replace("{input}", shown).removeprefix("Value error, ")

    def shown(self, path: YamlPath) -> str:
        """The value at ``path`` as it reads in a message."""
        return describe(value_at(self.data, path))

    def section(self, path: YamlPath) -> tuple[str, type[BaseModel] | None]:
        """The mapping at ``path`` as a reader calls it (``rule 'low'``), and its model."""
        model = _model_at(self.model, path)
        title = model.model_config.get("title") if model else None
        where = title or ".".join(str(part) for part in path) or "the file"
        name = value_at(self.data, (*path, "name"))
        return (f"{where} {name!r}" if isinstance(name, str) else where), model

    def _unknown_key(self, path: YamlPath) -> str:
        key = path[-1]
        where, model = self.section(path[:-1])
        message = f"unknown key {key!r} in {where}"
        if model is None:
            return message
        fields = [info.alias or name for name, info in model.model_fields.items()]
        close = difflib.get_close_matches(str(key), fields, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return f"{message}; expected one of: {', '.join(fields)}"


def _emptied(error: ErrorDetails, errors: list[ErrorDetails]) -> bool:
    """A list too short only because its invalid items were left out: those are the news."""
    loc = error["loc"]
    return error["type"] == "too_short" and any(
        len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in errors
    )


def yaml_path(loc: tuple[int | str, ...], data: Any) -> tuple[YamlPath, bool]:
    """The YAML path of a pydantic location, and whether the error is about a mapping key.

    pydantic adds parts that are not in the data: a discriminated union's tag, the
    ``[key]`` marker of a mapping key, and the name of a key that is missing. They are
    skipped, so an error lands on the deepest part that was written (a missing key on the
    mapping that lacks it).
    """
    path: list[object] = []
    node = data
    on_key = False
    for part in loc:
        if part == "[key]":
            on_key = True
            continue
        if not _has(node, part) and isinstance(node, dict):
            # pydantic writes a key that is not text as text: `~:` is 'None' in the loc.
            part = next((key for key in node if str(key) == part), part)
        if _has(node, part):
            node = node[part]
            path.append(part)
    return tuple(path), on_key


def value_at(data: Any, path: YamlPath) -> Any:
    """The value at ``path``, or None where the data has none."""
    for part in path:
        if not _has(data, part):
            return None
        data = data[part]
    return data


def describe(value: object) -> str:
    """A scalar as written in YAML; a container by its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return type_name(value)


def type_name(value: object) -> str:
    """What YAML made of a value, in a reader's words: ``a mapping``, ``an empty value``."""
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


def _has(node: Any, part: object) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _model_at(root: type[BaseModel], path: YamlPath) -> type[BaseModel] | None:
    """The model that validates the mapping at ``path``, following fields and items."""
    current: object = root
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        else:
            args = get_args(current)
            if not args:
                return None
            current = args[-1] if get_origin(current) is dict else args[0]
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: object) -> object:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not NoneType)
        else:
            return annotation
