"""Reading an HTTP body within a size limit, shared by the adapters and the webhook sink."""

from __future__ import annotations

import aiohttp


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, read as they stream in: a huge answer cannot
    exhaust memory, and nothing past ``limit`` is read."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and not response.content.at_eof():
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)  # one chunk, the usual case, is returned without a copy
