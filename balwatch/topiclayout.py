"""Retained MQTT ``active/`` alerts follow a change of topic layout, once per upgrade.

Layout 1 had no venue segment (``active/<rule>/<account>/<asset>``); layout 2
(:data:`~balwatch.sinks.mqtt.TOPIC_LAYOUT`) has (``active/<rule>/<account>/<venue>/<asset>``).
On the first start after the upgrade, for every MQTT sink:

- each ``active/`` topic of layout 1 that may hold a retained alert is cleared: those of the
  alerts firing in the saved state, of balwatch's own firing alerts, and of every alert
  document still in the outbox (a resolve not yet delivered would otherwise leave its old
  topic showing the alert forever). Alerts of groups (``group_by``) came with layout 2, so
  they have no layout-1 topic to clear;
- each alert firing now is retained on its layout-2 ``active/`` topic (if the sink would get
  its notifications), so a consumer that connects late still sees it. Nothing is published
  on ``alerts/``: no one is paged again.

These publishes are outbox deliveries (upkeep documents, see :mod:`balwatch.sinks.mqtt`),
committed in one transaction with the marker that records the new layout: a crash before
the commit redoes the whole step at the next start, one after it leaves the deliveries to
the outbox, which retries them while a broker is down and sends each after the alert's
earlier deliveries and before its later ones (it orders per fingerprint), so a resolve that
follows can never be overtaken by the retained copy. With the marker set, later starts do
nothing. It runs before the outbox's workers start, so no delivery still in the outbox is
sent (and pruned) before its old topic is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog

from balwatch.alert import Alert
from balwatch.config.model import MqttSinkConfig, SinkConfig
from balwatch.outbox.routing import route
from balwatch.sink import AlertDoc
from balwatch.sinks.mqtt import (
    CLEAR_V1_ACTIVE,
    RETAINED_ONLY,
    SET_ACTIVE,
    TOPIC_LAYOUT,
    v1_topic_tail,
)
from balwatch.state.base import AlertCommit, RoutedAlert, SavedState, StateStore

log = structlog.get_logger(__name__)

# The SavedState marker that records the layout the retained topics are in.
MARKER = "mqtt_topic_layout"


async def upgrade_topic_layout(
    store: StateStore, sinks: Sequence[SinkConfig], saved: SavedState, firing: Sequence[Alert]
) -> None:
    """Move retained alerts to the current layout unless ``saved`` says it was done.

    Call once the outbox store is open, before its workers start (``Outbox.start``) and
    before any alert is published: ``saved`` is what the state database held at start,
    ``firing`` every alert firing now (rule alerts and balwatch's own), with the
    ``instance`` and ``url`` they are sent with. A database that cannot be written is
    logged, not raised: polling and alerting matter more, and the next start tries again.
    """
    if saved.markers.get(MARKER, 0) >= TOPIC_LAYOUT:
        return
    try:
        await _upgrade(store, sinks, saved, firing)
    except Exception:
        log.exception("mqtt_topic_layout_upgrade_failed", layout=TOPIC_LAYOUT)


async def _upgrade(
    store: StateStore, sinks: Sequence[SinkConfig], saved: SavedState, firing: Sequence[Alert]
) -> None:
    mqtt = [sink.name for sink in sinks if isinstance(sink, MqttSinkConfig)]
    items: list[RoutedAlert] = []
    if mqtt:
        retained = [
            *(state.to_json() for state in saved.alerts if state.phase == "firing"),
            *(alert.to_json() for alert in saved.self_alerts),
            *await store.documents(),
        ]
        items += [RoutedAlert(doc, mqtt) for doc in _clears(retained)]
        for alert in firing:
            doc = {**alert.to_json(), RETAINED_ONLY: SET_ACTIVE}
            names = [name for name in route(doc, sinks, alert.notify) if name in mqtt]
            if names:
                items.append(RoutedAlert(doc, names))
    await store.commit(AlertCommit(items, markers={MARKER: TOPIC_LAYOUT}))
    log.info(
        "mqtt_topic_layout_upgraded",
        layout=TOPIC_LAYOUT,
        sinks=len(mqtt),
        cleared=sum(1 for item in items if item.alert[RETAINED_ONLY] == CLEAR_V1_ACTIVE),
        retained=sum(1 for item in items if item.alert[RETAINED_ONLY] == SET_ACTIVE),
    )


def _clears(documents: Iterable[AlertDoc]) -> list[AlertDoc]:
    """One clearing document per layout-1 topic, keyed by the fingerprint of its alert."""
    clears: dict[str, AlertDoc] = {}
    for doc in documents:
        if RETAINED_ONLY in doc:  # an upkeep document itself: nothing of layout 1
            continue
        if doc.get("group") is not None:  # groups came after layout 1: never retained there
            continue
        clears.setdefault(
            v1_topic_tail(doc),
            {
                **{key: doc.get(key) for key in ("fingerprint", "rule", "account", "asset")},
                RETAINED_ONLY: CLEAR_V1_ACTIVE,
            },
        )
    return list(clears.values())
