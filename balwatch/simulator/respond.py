"""The request flow every fake source shares: count, delay, fault or a good answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from decimal import Context, Decimal, DecimalException
from typing import Final

from aiohttp import web

from balwatch.simulator.state import AssetFields, Fault, FaultKind, SimAccount, SimState

# Longest a "timeout" fault holds a request open; clients give up long before.
_HANG_SECONDS = 300.0

_HTML_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body>"
    "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)

# What a wrong-types fault renders for an account with no assets (or none selected): one
# asset, or the fault would send a valid empty answer and a test of it would pass vacuously.
PLACEHOLDER_ASSETS: Final[dict[str, AssetFields]] = {
    "BTC": {"total": "0", "available": "0", "locked": "0"}
}

# Derived amounts stay exact for any scenario value a person would write.
_EXACT: Final = Context(prec=200)

# Renders the good answer for an account.
RenderOk = Callable[[SimAccount], web.Response]
# Renders a fault the source answers in its own way, or None to use the generic form.
RenderFault = Callable[[Fault, SimAccount], web.Response | None]


def json_text(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=body, content_type="application/json", headers=headers or {}
    )


async def serve_balances(
    state: SimState,
    request: web.Request,
    account: SimAccount,
    render_ok: RenderOk,
    render_fault: RenderFault,
) -> web.StreamResponse:
    """Answer an authenticated, in-limit balance request, applying delay and faults."""
    if account.delay:
        await asyncio.sleep(account.delay)
    fault = account.take_fault()
    if fault is None:
        return render_ok(account)
    own = render_fault(fault, account)
    if own is not None:
        return own
    return await _generic_fault(state, request, fault, account, render_ok)


async def _generic_fault(
    state: SimState,
    request: web.Request,
    fault: Fault,
    account: SimAccount,
    render_ok: RenderOk,
) -> web.StreamResponse:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    match fault.kind:
        case FaultKind.TIMEOUT:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.closing.wait(), _HANG_SECONDS)
            return json_text(504, '{"error": "gateway timeout"}')
        case FaultKind.RESET:
            if request.transport is not None:
                request.transport.abort()
            # aiohttp needs a response object even though the peer will never see it.
            return web.Response(status=500)
        case FaultKind.MALFORMED_JSON:
            return json_text(200, '{"success": true, "payload": {"balances": [{"currency": ')
        case FaultKind.HTML:
            return web.Response(status=502, text=_HTML_PAGE, content_type="text/html")
        case FaultKind.TRUNCATED:
            good = render_ok(account).text or ""
            return json_text(200, good[: len(good) // 2])
        case FaultKind.RAW:
            return web.Response(
                status=fault.status,
                text=fault.body,
                headers={"Content-Type": fault.content_type, **headers},
            )
        case FaultKind.REJECT:
            return json_text(503, '{"error": "service unavailable"}', headers)
        case FaultKind.THROTTLE:
            return json_text(429, '{"error": "too many requests"}', headers)
        case FaultKind.AUTH:
            return json_text(401, '{"error": "unauthorized"}')
        case FaultKind.STATUS | FaultKind.WRONG_TYPES:
            return json_text(fault.status, '{"error": "simulated failure"}', headers)


def free_and_locked(fields: AssetFields) -> tuple[str, str]:
    """(available, locked) for a source that sends no total: each as stored, or derived from
    ``total`` minus the other, else "0". Text that is not a number passes through as is, so
    bad scenario data reaches the client."""
    available, locked, total = fields.get("available"), fields.get("locked"), fields.get("total")
    if total is not None:
        if available is None:
            available = _minus(total, locked or "0")
        if locked is None:
            locked = _minus(total, available)
    return available or "0", locked or "0"


def _minus(total: str, part: str) -> str:
    try:
        return str(_EXACT.subtract(Decimal(total), Decimal(part)))
    except DecimalException:
        return total
