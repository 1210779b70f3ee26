"""Child process for the SIGKILL test: enqueue alerts to a webhook, deliver until killed.

``python -m tests.outbox.crash_child STATE_DIR URL FINGERPRINTS EVENTS`` prints ``enqueued`` once
every alert is committed, then keeps delivering until the parent kills it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from balwatch.config.model import WebhookSinkConfig
from balwatch.outbox.worker import Outbox
from balwatch.sinks.webhook import WebhookSink
from balwatch.state.sqlite import SqliteStateStore
from tests.outbox.doubles import alert

SINK = "hook"


def sink_config(url: str) -> WebhookSinkConfig:
    return WebhookSinkConfig.model_validate(
        {"type": "webhook", "name": SINK, "url": url, "timeout": "60s"}
    )


async def main(state_dir: Path, url: str, fingerprints: int, events: int) -> None:
    async with SqliteStateStore(state_dir) as store, WebhookSink(sink_config(url)) as sink:
        outbox = Outbox(store, [sink], concurrency=8)
        await outbox.start()
        for seq in range(events):  # one transition at a time, as the rule engine emits them
            for f in range(fingerprints):
                await outbox.enqueue(alert(f"fp{f}", seq), [SINK])
        print("enqueued", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    state_dir, url, fingerprints, events = sys.argv[1:]
    asyncio.run(main(Path(state_dir), url, int(fingerprints), int(events)))
