"""A session's subscriptions and downlink delivery decisions. Pure.

The platform writes downlinks with ``corem-ingress downlink`` (recorded in the tenant's
downlink stream, fanned out to every node over pub/sub); the node holding the device's
MQTT session publishes it to ``devices/{id}/down/{kind}`` at
min(requested QoS, granted subscription QoS), if the device subscribed to that topic.
"""

from __future__ import annotations

from corem_ingress.adapters.mqtt import policy
from corem_ingress.core.downlink import Downlink


class Subscriptions:
    __slots__ = ("_filters",)

    def __init__(self) -> None:
        self._filters: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._filters)

    def add(self, topic_filter: str, qos: int) -> None:
        self._filters[topic_filter] = qos

    def remove(self, topic_filter: str) -> None:
        self._filters.pop(topic_filter, None)

    def qos_for(self, topic: str) -> int | None:
        """Highest granted QoS among matching filters; None if nothing matches."""
        best: int | None = None
        for topic_filter, qos in self._filters.items():
            if policy.topic_matches(topic_filter, topic) and (best is None or qos > best):
                best = qos
        return best


def plan(subs: Subscriptions, downlink: Downlink) -> tuple[str, int] | None:
    """(topic, QoS) to publish this downlink with, or None if the device is not subscribed."""
    topic = policy.downlink_topic(downlink.device_id, downlink.kind)
    granted = subs.qos_for(topic)
    if granted is None:
        return None
    return topic, min(downlink.qos, granted)
