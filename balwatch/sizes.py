"""Byte sizes as users write them: ``65536``, ``512KiB``, ``8MiB``, ``1GiB``."""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_SIZE_RE: Final = re.compile(r"([0-9]{1,10})(B|KiB|MiB|GiB)?")


def parse_size(text: str) -> int:
    """Bytes in ``text``; raises ValueError naming the accepted forms."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a size like 512KiB, 8MiB or a number of bytes, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def format_size(size: int) -> str:
    """The spelling of ``size`` in the largest unit that divides it: ``8MiB``, ``1500B``."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}B"
