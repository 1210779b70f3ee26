"""``balwatch send-test``: a synthetic alert through the real delivery path, to prove wiring.

The alert goes through an outbox and a :class:`~balwatch.outbox.worker.SinkWorker`, with
the sink built exactly as the daemon builds it, so retries, backoff and dead-lettering
behave as they will in production. The outbox is a throwaway database, not the one in
``state_dir``: a running daemon must not pick up (and deliver again) a test alert, and a
test that failed must not keep retrying after the command has reported it.

The test alert fires and resolves again (on a webhook with ``send_resolved: false`` it only
fires), so it leaves no retained ``active/`` message on an MQTT broker. A sink that groups
sends each on its own, at once (paced as always): the test is of the wiring, not of timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from balwatch.alert import Alert, new_id, placed
from balwatch.config.model import NO_GROUPING, Config, SinkConfig, WebhookSinkConfig
from balwatch.outbox.worker import Outbox
from balwatch.sink import Sink
from balwatch.state.base import AlertCommit, RoutedAlert
from balwatch.state.sqlite import SqliteStateStore

TEST_RULE: Final = "balwatch-test"
TEST_ACCOUNT: Final = "send-test"

BuildSink = Callable[[SinkConfig], Sink]


@dataclass(frozen=True, slots=True)
class SendTestResult:
    """``reason`` says why when ``delivered`` is False."""

    sink: str
    delivered: bool
    reason: str | None
    alert_ids: tuple[str, ...]


def synthetic_alerts(
    sink: str,
    *,
    resolve: bool,
    now: datetime,
    instance: str,
    external_url: str | None = None,
) -> list[dict[str, object]]:
    """The test notifications for ``sink``: a firing alert, and its resolve if wanted, from
    the installation named ``instance`` (with a ``url`` when ``external_url`` is set)."""
    moment = now.astimezone(UTC).replace(microsecond=0)
    firing = Alert(
        fingerprint=hashlib.sha256(f"{TEST_RULE}\0{sink}".encode()).hexdigest()[:16],
        event="firing",
        rule=TEST_RULE,
        severity="info",
        account=TEST_ACCOUNT,
        exchange="balwatch",
        venue=None,
        asset=None,
        summary=f"TEST alert from balwatch send-test: sink {sink} works",
        description="Sent by `balwatch send-test` to check delivery. No action needed.",
        labels={"test": "true"},
        expression="",
        values={},
        started_at=moment,
        observed_at=moment,
    )
    alerts = [firing]
    if resolve:
        alerts.append(
            dataclasses.replace(firing, id=new_id(), event="resolved", resolved_at=moment)
        )
    return [placed(alert, instance, external_url).to_json() for alert in alerts]


async def send_test(
    config: Config, sink_name: str, build: BuildSink, *, timeout: float = 30.0
) -> SendTestResult:
    """Deliver the test alert to the sink named ``sink_name`` and report how it went.

    Waits up to ``timeout`` seconds, retrying as the daemon would. ``build`` makes the sink
    from its config as the daemon does (``balwatch.sinks.registry.build_sink``). Raises
    ValueError for an unknown sink.
    """
    sink_config = next((s for s in config.sinks if s.name == sink_name), None)
    if sink_config is None:
        known = ", ".join(s.name for s in config.sinks) or "none"
        raise ValueError(f"no sink named {sink_name!r}; configured sinks: {known}")
    if isinstance(sink_config, WebhookSinkConfig) and sink_config.grouping is not None:
        # The test proves URL and format, not timing: no group_wait, and its firing and
        # resolve each a message (in one group they would show as the resolve alone).
        ungrouped = {"group_by": (NO_GROUPING,), "group_wait": None, "group_interval": None}
        sink_config = sink_config.model_copy(update=ungrouped)
    alerts = synthetic_alerts(
        sink_name,
        resolve=sink_config.receives_resolved,
        now=datetime.now(UTC),
        instance=config.instance,
        external_url=config.external_url,
    )
    ids = tuple(str(alert["id"]) for alert in alerts)
    with tempfile.TemporaryDirectory(prefix="balwatch-send-test-") as tmp:
        async with SqliteStateStore(Path(tmp)) as store, build(sink_config) as sink:
            outbox = Outbox(store, [sink], concurrency=1)
            await outbox.start()
            try:
                await outbox.commit(AlertCommit([RoutedAlert(a, [sink.name]) for a in alerts]))
                async with asyncio.timeout(timeout):
                    await outbox.wait_settled()
            except TimeoutError:
                pass  # reported below from the worker's last error
            finally:
                await outbox.stop()
            stats = outbox.stats()[sink_name]
            dead = await store.dead_letters(sink_name)
    if stats.delivered == len(alerts):
        return SendTestResult(sink_name, True, None, ids)
    if dead:
        reason = f"rejected, will not be retried: {dead[0].error}"
    else:
        last = stats.last_error or "no attempt finished"
        reason = f"not delivered within {timeout:g}s; last error: {last}"
    return SendTestResult(sink_name, False, reason, ids)
