"""Plain-text tables for the terminal commands.

Cells can hold text from an exchange (asset codes, error messages): control characters in
them are escaped, so a cell can neither drive the terminal nor break the table's lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from balwatch import terminal
from balwatch.model import METRICS, Balance
from balwatch.poll import PollResult


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[terminal.escape(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def balances_table(results: Sequence[PollResult]) -> str:
    """Rows of every good poll; only the metric columns some row reports. None shows as '-'."""
    rows: list[Balance] = [row for r in results for row in (r.rows or [])]
    metrics = [m for m in METRICS if any(row.metric(m) is not None for row in rows)]
    headers = ["account", "venue", "asset", *metrics]
    cells = [
        [
            row.account,
            row.venue,
            row.asset,
            *("-" if (v := row.metric(m)) is None else str(v) for m in metrics),
        ]
        for row in rows
    ]
    return render_table(headers, cells)


def failures_table(results: Sequence[PollResult]) -> str:
    failed = [r for r in results if r.error is not None]
    return render_table(
        ["account", "exchange", "error", "message"],
        [[r.account, r.exchange, str(r.error.kind), r.error.message] for r in failed if r.error],
    )
