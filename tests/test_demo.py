"""The demo's broker probe: MQTT only when a broker on localhost takes us anonymously."""

from __future__ import annotations

import asyncio

from balwatch.demo.story import _broker_answers
from tests.brokers import Mosquitto, free_port


async def test_a_broker_that_takes_anonymous_clients_is_used() -> None:
    async with Mosquitto() as broker:
        assert await _broker_answers(broker.port) is True


async def test_a_port_that_only_accepts_tcp_is_not_taken_for_a_broker() -> None:
    """Else the demo's daemon waits for a sink that never connects, and the story never starts."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await asyncio.wait_for(_broker_answers(port), 10) is False
    assert await _broker_answers(free_port()) is False  # nothing listening
