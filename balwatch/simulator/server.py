"""One aiohttp server on loopback that speaks all four balance APIs at their real paths.

The paths do not collide (``/v1/balances``, ``/api/v3/balance/``, ``/v2/balance``,
``/api/v1/private``), so every account's ``base_url`` is the simulator's one URL. Binance
spot (``/api/v3/account``) and the Bitso and Binance market data are served too, for ccxt.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web

from balwatch.simulator import binance, bitso, bitso_market, coinapi, coinw, control, kunacore
from balwatch.simulator.state import SimState

# Each fake source contributes its routes; this tuple is the simulator's source registry.
_SOURCES = (coinapi, bitso, kunacore, coinw, binance, bitso_market)


def build_app(state: SimState) -> web.Application:
    app = web.Application()
    for source in _SOURCES:
        app.add_routes(source.routes(state))
    app.add_routes(control.routes(state))
    return app


class Simulator:
    """``async with Simulator(state) as sim:`` serves on ``sim.url`` until the block ends."""

    def __init__(self, state: SimState, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner = web.AppRunner(build_app(self.state), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://{self._host}:{port}"

    async def stop(self) -> None:
        self.state.closing.set()  # releases requests held open by "timeout" faults
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
