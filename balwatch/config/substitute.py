"""``${...}`` references inside string values, so secrets stay out of the file itself.

``${VAR}`` reads the environment, ``${file:/path}`` a file (relative paths are relative to
the YAML file), ``${cred:NAME}`` a systemd credential in ``$CREDENTIALS_DIRECTORY``, and
``$${`` is a literal ``${``. Expansion is a single pass: a value that itself contains
``${`` is not expanded again. Errors name the reference, never the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from balwatch.config.yamlsource import YamlDocument, YamlPath, out_of_descriptors
from balwatch.errors import Problem

_TOKEN: Final = re.compile(r"\$\$\{|\$\{(?P<ref>[^}]*)\}|\$\{")
_VAR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYNTAX_HINT: Final = "expected ${NAME}, ${file:/path} or ${cred:NAME}; write $${ for a literal ${"


@dataclass(frozen=True, slots=True)
class Substituted:
    data: Any
    # Scalars that held a reference: their text is not the file's and may be secret,
    # so error messages must not quote them.
    paths: frozenset[YamlPath]
    # Scalars whose references failed: each already has a problem, further checks are noise.
    failed: frozenset[YamlPath]
    problems: tuple[Problem, ...]


class _Unresolved(Exception):
    """One reference could not be resolved; the message says which and why."""


def substitute(doc: YamlDocument, environ: Mapping[str, str] | None = None) -> Substituted:
    """Expand every reference in the string values (not keys) of ``doc``."""
    expander = _Expander(doc, os.environ if environ is None else environ)
    data = expander.walk(doc.data, ())
    return Substituted(
        data, frozenset(expander.paths), frozenset(expander.failed), tuple(expander.problems)
    )


class _Expander:
    def __init__(self, doc: YamlDocument, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.environ = environ
        self.base_dir = Path(doc.file).parent
        self.paths: set[YamlPath] = set()
        self.failed: set[YamlPath] = set()
        self.problems: list[Problem] = []

    def walk(self, value: Any, path: YamlPath) -> Any:
        if isinstance(value, dict):
            return {key: self.walk(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self.walk(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._expand(value, path)
        return value

    def _expand(self, text: str, path: YamlPath) -> str:
        parts: list[str] = []
        end = 0
        for match in _TOKEN.finditer(text):
            parts.append(text[end : match.start()])
            end = match.end()
            if match.group(0) == "$${":
                parts.append("${")
                continue
            self.paths.add(path)
            try:
                parts.append(self._resolve(match.group("ref")))
            except _Unresolved as exc:
                self.failed.add(path)
                line, column = self.doc.position(path)
                self.problems.append(
                    Problem(self.doc.file, line, column, str(exc), kind="unresolved reference")
                )
        parts.append(text[end:])
        return "".join(parts)

    def _resolve(self, ref: str | None) -> str:
        if ref is None:
            raise _Unresolved(f"unterminated '${{' in value; {_SYNTAX_HINT}")
        kind, colon, name = ref.partition(":")
        if not colon and _VAR_NAME.fullmatch(ref):
            if ref not in self.environ:
                raise _Unresolved(f"environment variable {ref} is not set (used as ${{{ref}}})")
            return self.environ[ref]
        if kind == "file" and name:
            return _read(self.base_dir / name, f"${{{ref}}}")
        if kind == "cred" and name and "/" not in name and name not in (".", ".."):
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise _Unresolved(
                    f"${{{ref}}} needs $CREDENTIALS_DIRECTORY, which is not set "
                    "(systemd sets it for LoadCredential=)"
                )
            return _read(Path(directory) / name, f"${{{ref}}}")
        raise _Unresolved(f"invalid reference ${{{ref}}}; {_SYNTAX_HINT}")


def _read(path: Path, ref: str) -> str:
    """File contents without the one line ending that editors and `echo` append."""
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as exc:
        if out_of_descriptors(exc):
            raise  # the machine's state, not the config's: the caller retries later
        raise _Unresolved(f"cannot read {path} for {ref}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _Unresolved(f"cannot read {path} for {ref}: not UTF-8 text") from None
    return content.removesuffix("\n").removesuffix("\r")
