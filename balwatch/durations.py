"""Duration strings as users write them: ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

_UNITS: Final = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError naming the accepted forms."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a duration like 500ms, 30s, 5m, 2h or 1d, got {text!r}")
    return float(Decimal(match.group(1)) * _UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the largest whole unit; zero is ``0s``."""
    millis = round(seconds * 1000)
    if not millis:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"
