"""Reading an HTTP body within a size limit, shared by the adapters and the webhook sink."""

from __future__ import annotations

import aiohttp


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, read as they stream in: a huge answer cannot
    exhaust memory, and nothing past ``limit`` is read."""
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
