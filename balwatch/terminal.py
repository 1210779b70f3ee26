"""Text from outside made safe to show on a terminal: control characters shown, not obeyed.

An exchange's answer can carry ESC or BEL sequences (in an asset code, an error message);
printed raw they would recolour, retitle or rewrite the operator's terminal. Every table and
log line meant for a terminal passes its outside text through :func:`escape`.
"""

from __future__ import annotations


def escape(text: str, keep: str = "") -> str:
    """``text`` with each non-printable character (control and format characters, line
    and paragraph separators) written as its Python escape, ``\\x1b`` for ESC; characters
    in ``keep`` (a line break in multi-line output) stay as they are."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char in keep else repr(char)[1:-1] for char in text
    )
