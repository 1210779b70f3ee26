"""A failure that can repeat thousands of times a second, logged once per burst.

Out of file descriptors, every accept of the HTTP listener fails, and so does every look at
the config files; a log line for each would flood the journal and hide what matters. A
:class:`Burst` logs the first failure, counts the rest, and logs once more, with the count,
when the thing has worked for a while again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

# A success this long after the last failure ends the burst. Shorter gaps are one burst:
# under a connection flood, accepts fail and succeed many times a second.
QUIET_SECONDS: Final = 30.0


class Burst:
    """``failed()`` on each failure, ``ok()`` on each success; two log lines per burst."""

    def __init__(
        self,
        logger: Any,
        started: str,
        ended: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``started``/``ended``: the event ids of the first failure and of the recovery."""
        self._log = logger
        self._started = started
        self._ended = ended
        self._clock = clock
        self.failures = 0  # in the burst going on; 0 between bursts
        self._last_failure = 0.0

    def failed(self, **fields: object) -> None:
        self.failures += 1
        self._last_failure = self._clock()
        if self.failures == 1:
            self._log.warning(self._started, **fields)

    def ok(self) -> None:
        if self.failures and self._clock() - self._last_failure >= QUIET_SECONDS:
            self._log.info(self._ended, failures=self.failures)
            self.failures = 0
