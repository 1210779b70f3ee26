"""Masking secrets in text that leaves the process, in every form an echo can take.

A server or proxy that echoes a request quotes its credentials as they travelled, or
re-encoded: plain, JSON-escaped (``\\u00e4`` or raw UTF-8, ``\\"``, ``\\\\``, ``\\/``),
URL-encoded (``quote`` or ``quote_plus``, upper- or lower-case hex), HTML-escaped, or inside
base64 (standard or URL-safe, padded or not), where the secret may sit at any offset of a
longer text, as the password does in the Basic auth of ``login:password``. A
:class:`Redactor` knows each of its secrets in all these forms and replaces any of them
with ``***``.

The process has one installed redactor, built from the loaded config's secrets: the
daemon and the CLI call :func:`install` when they load a config (and on reload). Every
place that lets outside text leave the process passes it through :func:`installed`: the
log processor, the CLI's printers, self-alert texts, dead-letter errors. An adapter adds
what only it knows (a login token, a signature) with :meth:`Redactor.including` before it
quotes an answer, and quotes through :meth:`Redactor.quote`, which masks before it cuts.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple
from urllib.parse import quote, quote_plus

from balwatch.secret import MASK, Secret

# Shorter values are not masked: masking "12" everywhere would garble every number shown.
MIN_SECRET_CHARS: Final = 4
# Outside text is quoted in error messages only this far: enough to diagnose, never a page.
QUOTE_CHARS: Final = 120
# How much of a text :meth:`Redactor.quote` reads to fill QUOTE_CHARS once whitespace runs
# are collapsed: a bounded amount of work, whatever the size of the text.
_QUOTE_SCAN: Final = 8 * QUOTE_CHARS

_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9a-f]{4})")
_PERCENT: Final = re.compile(r"%[0-9A-F]{2}")
_BASE64_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
)
_TO_URLSAFE: Final = str.maketrans("+/", "-_")
# Characters of a form that locate it (every form is at least MIN_SECRET_CHARS long).
_ANCHOR: Final = 4


class Redactor:
    """Masks a fixed set of secrets. Cheap to build: patterns are compiled once per set."""

    __slots__ = ("_parts", "_values")

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        self._values = _values(secrets)
        self._parts = (_compile(self._values),) if self._values else ()

    def __bool__(self) -> bool:
        """False when there is nothing to mask."""
        return bool(self._parts)

    def including(self, secrets: Iterable[Secret]) -> Redactor:
        """A redactor for these secrets as well as this one's (only the new ones compiled)."""
        extra = _values(secrets) - self._values
        if not extra:
            return self
        combined = Redactor()
        combined._values = self._values | extra
        combined._parts = (*self._parts, _compile(extra))
        return combined

    def text(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        for part in self._parts:
            text = part.mask(text)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with its text masked: strings, exceptions (as their text), and the
        strings inside lists, tuples and dicts, keys included. Anything else as it is."""
        if not self._parts:
            return value
        if isinstance(value, BaseException):
            value = str(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.value(key): self.value(item) for key, item in value.items()}
        return value

    def quote(self, text: str, *, whole: bool = True) -> str:
        """Outside text for an error message: masked, on one line, cut short, quoted.

        Masking comes before the cut, so a cut never leaves a secret's head showing. Only
        the head of a long text is read, with room for a secret that starts in it to end;
        ``whole=False`` says ``text`` itself is such a head (a body read up to a size cap).
        The end of a head is dropped after masking, since a secret may run past it. Control
        characters come out escaped (``repr``), so the result is safe on a terminal.
        """
        room = max((part.longest for part in self._parts), default=0)
        if len(text) > _QUOTE_SCAN + room:
            text, whole = text[: _QUOTE_SCAN + room], False
        masked = self.text(text)
        if not whole:
            masked = masked[: len(masked) - room]
        line = " ".join(masked.split())
        if whole and len(line) <= QUOTE_CHARS:
            return repr(line)
        return repr(line[:QUOTE_CHARS] + "...")


class _Compiled(NamedTuple):
    """Every form of a set of secrets, found in two steps: a regex finds where a form may
    start (its first :data:`_ANCHOR` characters), then each form with that start is tried
    longest first. A regex of only the starts compiles in a fraction of the time one of
    every whole form would, which counts with thousands of secrets at start-up."""

    anchors: re.Pattern[str]
    forms: dict[str, tuple[str, ...]]  # start -> the forms beginning with it, longest first
    # The base64 forms, with whether a character shared with a neighbour may sit before
    # and after them (see base64_forms).
    base64: dict[str, tuple[bool, bool]]
    longest: int  # the longest text a match can cover

    def mask(self, text: str) -> str:
        parts: list[str] = []
        done = 0  # text before this index is in ``parts``
        at = 0
        while (anchor := self.anchors.search(text, at)) is not None:
            at = anchor.start()
            form = next((f for f in self.forms[anchor[0]] if text.startswith(f, at)), None)
            if form is None:
                at += 1  # another form may start inside this anchor
                continue
            start, stop = at, at + len(form)
            edges = self.base64.get(form)
            if edges is not None:
                start, stop = _widened(text, start, stop, edges)
            if start > done or not parts:
                parts += (text[done:start], MASK)
            done = at = max(done, stop)  # touching forms share one mask
        if not parts:
            return text
        parts.append(text[done:])
        return "".join(parts)


def _values(secrets: Iterable[Secret]) -> frozenset[str]:
    return frozenset(
        value for secret in secrets if len(value := secret.reveal()) >= MIN_SECRET_CHARS
    )


# --- the forms a secret takes --------------------------------------------------------------


def text_forms(value: str) -> set[str]:
    """``value`` as it reads plain, JSON-escaped, URL-encoded and HTML-escaped."""
    forms = {value, html.escape(value)}
    escaped = {json.dumps(value, ensure_ascii=ascii_only)[1:-1] for ascii_only in (True, False)}
    escaped |= {_UNICODE_ESCAPE.sub(lambda m: "\\u" + m[1].upper(), form) for form in escaped}
    forms |= escaped | {form.replace("/", "\\/") for form in escaped}
    encoded = {encode(value, safe=safe) for encode in (quote, quote_plus) for safe in ("", "/")}
    forms |= encoded | {_PERCENT.sub(lambda m: m[0].lower(), form) for form in encoded}
    return forms


def base64_forms(value: str) -> Iterator[tuple[str, tuple[bool, bool]]]:
    """The base64 text that encodes ``value``'s bytes wherever they sit in a longer text.

    Base64 packs 3 bytes into 4 characters, so the encoding of a secret depends on its
    offset modulo 3: for each offset, the characters made of the secret's bits alone (the
    "core"), standard and URL-safe. Beside the core there may be a character holding bits
    of the secret and of its neighbour: the flags say whether one is there before and after
    (see :func:`_widened`).
    """
    data = value.encode()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        first = -(-offset * 8 // 6)  # characters holding the prefix's bits come first
        end = (offset + len(data)) * 8 // 6
        core = encoded[first:end]
        edges = (offset > 0, (offset + len(data)) % 3 != 0)
        yield core, edges
        yield core.translate(_TO_URLSAFE), edges


@functools.lru_cache(maxsize=64)
def _compile(values: frozenset[str]) -> _Compiled:
    every: set[str] = set()
    widen: dict[str, tuple[bool, bool]] = {}
    for value in values:
        every |= text_forms(value)
        widen.update(base64_forms(value))
    every |= widen.keys()
    # A text form that is also some secret's base64 core is widened like one: harmless.
    forms: dict[str, list[str]] = {}
    for form in sorted(every, key=len, reverse=True):
        forms.setdefault(form[:_ANCHOR], []).append(form)
    anchors = re.compile(_trie(forms))
    longest = max(map(len, every)) + 4
    return _Compiled(anchors, {k: tuple(v) for k, v in forms.items()}, widen, longest)


def _widened(text: str, start: int, stop: int, edges: tuple[bool, bool]) -> tuple[int, int]:
    """A base64 core's span with the characters that share bits with it, and any padding."""
    before, after = edges
    if before and start > 0 and text[start - 1] in _BASE64_CHARS:
        start -= 1
    if after and stop < len(text) and text[stop] in _BASE64_CHARS:
        stop += 1
    while stop < len(text) and text[stop] == "=":
        stop += 1
    return start, stop


def _trie(words: Iterable[str]) -> str:
    """A regex matching any of ``words``, shaped as a trie so that matching tries a few
    branches per character, not one per word."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def emit(node: dict[str, Any]) -> str:
        branches = []
        for char in sorted(key for key in node if key):
            child, chain = node[char], [char]
            while len(child) == 1 and "" not in child:  # a run with no branching: one literal
                ((char, child),) = child.items()
                chain.append(char)
            branches.append(re.escape("".join(chain)) + emit(child))
        if not branches:
            return ""
        body = "|".join(branches)
        if "" in node:
            return f"(?:{body})?"
        return body if len(branches) == 1 else f"(?:{body})"

    return emit(root)


def install(secrets: Iterable[Secret]) -> Redactor:
    """Make a redactor of ``secrets`` the process's own (at start and on every reload)."""
    global _installed
    _installed = Redactor(secrets)
    return _installed


def installed() -> Redactor:
    """The process's redactor: everything that lets outside text out passes it through."""
    return _installed


_installed = Redactor()
