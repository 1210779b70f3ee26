"""Bounded waits: a wait that never ends fails its test, saying what it was waiting for.

pytest-timeout (``timeout`` in pyproject.toml) is the backstop for a hang anywhere; a wait
through :func:`within` fails sooner and names the thing that did not happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final, TypeVar

import pytest

T = TypeVar("T")

# Long enough for a loaded two-core CI machine; events in these tests take milliseconds.
WAIT: Final = 10.0


async def within(awaitable: Awaitable[T], what: str, seconds: float = WAIT) -> T:
    """``await awaitable``, or fail the test after ``seconds`` with "waiting for <what>".

    A TimeoutError raised by the awaitable itself (not by this bound) passes through.
    """
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            return await awaitable
    except TimeoutError:
        if not bound.expired():
            raise
        pytest.fail(f"gave up after {seconds:g}s waiting for {what}")
