"""Which sinks get an alert: the rule's ``notify`` list, then each sink's own filters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from balwatch.alert import SEVERITY_RANK
from balwatch.sinks.base import AlertDoc


class RoutedSink(Protocol):
    """What routing reads from a sink's config (``MqttSinkConfig``, ``WebhookSinkConfig``)."""

    @property
    def name(self) -> str: ...

    @property
    def min_severity(self) -> str: ...

    @property
    def receives_resolved(self) -> bool:
        """Whether resolved alerts go to the sink (``send_resolved`` decides what it sends)."""


def route(
    alert: AlertDoc, sinks: Sequence[RoutedSink], notify: Sequence[str] | None = None
) -> list[str]:
    """Names of the sinks that should get ``alert``, in config order.

    ``notify`` is the rule's list; None means every sink, an empty list none. It is routing,
    not content, so ``Alert.to_json()`` leaves it out and it is passed here; a document that
    carries a ``"notify"`` key is honoured when no list is passed. Names in ``notify`` that
    match no sink are skipped: checking them against the config is the rule loader's job.
    """
    if notify is None:
        notify = alert.get("notify")
    try:
        rank = SEVERITY_RANK[alert["severity"]]
    except KeyError:
        raise ValueError(f"alert has no known severity: {alert.get('severity')!r}") from None
    resolved = alert.get("event") == "resolved"
    return [
        sink.name
        for sink in sinks
        if (notify is None or sink.name in notify)
        and rank >= SEVERITY_RANK[sink.min_severity]
        and (sink.receives_resolved or not resolved)
    ]
