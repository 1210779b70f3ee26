"""A credential value that never prints itself."""

from __future__ import annotations

import hashlib
from typing import Final

# What a secret shows instead of its value, here and wherever text is redacted.
MASK: Final = "***"


class Secret:
    """Holds a secret string; ``str``/``repr``/format show a mask, never the value.

    Only signing and authentication code calls :meth:`reveal`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible id: lets state be keyed per credential without holding it."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        raise TypeError("Secret values are not picklable")

    def __bool__(self) -> bool:
        return bool(self._value)
