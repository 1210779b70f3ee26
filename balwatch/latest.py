"""The latest balances of each account and how its last poll went, for ``/api/balances``.

The daemon hands every :class:`~balwatch.poll.PollResult` to :meth:`LatestBalances.update`.
A failed poll keeps the rows of the last good one (a failed poll is never a zero balance,
as in the rule engine) and is reported beside them, so a reader sees both what the
balances were and that they are getting old.

A failure is reported by its :class:`~balwatch.errors.ErrorKind` only, never its message:
the API has no authentication, and a message can quote what an exchange answered, which
is not under our control. The message is in the daemon's log (``poll_failed``) for
operators.

The same rows feed the balance gauges of ``/metrics`` (:mod:`balwatch.metrics`). The daemon
renders them on the event loop, but ``generate_latest`` may run anywhere:
:meth:`LatestBalances.good_rows` is the one method safe to call off the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from balwatch.alert import iso_z
from balwatch.errors import ErrorKind
from balwatch.model import Balance
from balwatch.poll import PollResult


@dataclass(slots=True)
class _Latest:
    exchange: str
    polled_at: float
    error: ErrorKind | None
    rows: list[Balance] | None = None  # of the last good poll; None before the first one
    rows_at: float | None = None


class LatestBalances:
    """Per account: the last good rows and the outcome of the last poll. One event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._accounts: dict[str, _Latest] = {}
        # Held by the loop while it changes the set of accounts, and by good_rows() while
        # it copies them from another thread; never across an await.
        self._lock = threading.Lock()

    def update(self, result: PollResult) -> None:
        """Record one poll, at the current time; cheap (keeps references, copies nothing)."""
        now = self._clock()
        kind = None if result.error is None else result.error.kind
        entry = self._accounts.get(result.account)
        if entry is None:
            with self._lock:
                entry = self._accounts[result.account] = _Latest(result.exchange, now, kind)
        else:
            entry.exchange, entry.polled_at, entry.error = result.exchange, now, kind
        if result.rows is not None:
            entry.rows, entry.rows_at = result.rows, now

    def forget(self, account: str) -> None:
        """The account left the config."""
        with self._lock:
            self._accounts.pop(account, None)

    def good_rows(self) -> list[Sequence[Balance]]:
        """The rows of each account's last good poll; safe to call from any thread.

        Poll results are never changed once made, so handing out their row lists is safe:
        a poll that lands meanwhile replaces an account's list rather than editing it.
        """
        with self._lock:
            entries = list(self._accounts.values())
        return [rows for entry in entries if (rows := entry.rows)]

    def document(self) -> dict[str, object]:
        """The ``/api/balances`` body: accounts by name, amounts as decimal strings.

        ``{"accounts": [{"account", "exchange", "last_poll": {"ok", "at", "error"},
        "rows_at", "rows": [Balance.to_json(), ...]}]}``; ``error`` is the error kind or
        null, times are ISO-8601 UTC with ``Z``, ``rows_at``/``rows`` are null and empty
        until the account's first good poll.
        """
        return {
            "accounts": [
                {
                    "account": account,
                    "exchange": entry.exchange,
                    "last_poll": {
                        "ok": entry.error is None,
                        "at": _iso(entry.polled_at),
                        "error": None if entry.error is None else str(entry.error),
                    },
                    "rows_at": None if entry.rows_at is None else _iso(entry.rows_at),
                    "rows": [row.to_json() for row in entry.rows or ()],
                }
                for account, entry in sorted(self._accounts.items())
            ]
        }


def _iso(unix: float) -> str:
    return iso_z(datetime.fromtimestamp(unix, UTC))
