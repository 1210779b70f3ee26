"""Fake kunacore balance API (placeholder until its module lands)."""

from __future__ import annotations

from aiohttp import web

from balwatch.simulator.state import SimState


def routes(state: SimState) -> list[web.RouteDef]:
    return []
