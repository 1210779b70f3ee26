"""From a sink's config model to a running :class:`~balwatch.sink.Sink`.

The one place that switches on the sink type: the outbox, routing and ``send-test`` see
only the :class:`Sink` interface, so a new receiver type is a new module plus a line here.
"""

from __future__ import annotations

from typing import assert_never

from balwatch.config.model import MqttSinkConfig, SinkConfig, WebhookSinkConfig
from balwatch.sink import Sink
from balwatch.sinks.mqtt import MqttSink
from balwatch.sinks.webhook import WebhookSink


def build_sink(config: SinkConfig, *, instance: str | None = None) -> Sink:
    """A sink for ``config``, not yet started (use ``async with`` or ``start``).

    ``instance``: a replica's name, for what it reports of itself (MQTT ``status/<instance>``).
    """
    if isinstance(config, MqttSinkConfig):
        return MqttSink(config, instance=instance)
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(config)
    assert_never(config)
