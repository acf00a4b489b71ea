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
    """Exact filters in a dict (one lookup), wildcard filters pre-split in a dict that
    ``mqtt.max_subscriptions`` bounds: matching a downlink costs one lookup plus at most
    that many wildcard comparisons, however the device subscribes."""

    __slots__ = ("_exact", "_ids", "_wildcards")

    def __init__(self) -> None:
        self._exact: dict[str, int] = {}
        #: filter -> (its levels, granted QoS)
        self._wildcards: dict[str, tuple[list[str], int]] = {}
        #: MQTT 5 Subscription Identifiers by filter (created on first use).
        self._ids: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)

    def __contains__(self, topic_filter: str) -> bool:
        return topic_filter in self._exact or topic_filter in self._wildcards

    def add(self, topic_filter: str, qos: int, subscription_id: int | None = None) -> None:
        if "+" in topic_filter or "#" in topic_filter:
            self._wildcards[topic_filter] = (topic_filter.split("/"), qos)
        else:
            self._exact[topic_filter] = qos
        # A re-subscribe replaces the subscription, its identifier included.
        if subscription_id is not None:
            if self._ids is None:
                self._ids = {}
            self._ids[topic_filter] = subscription_id
        elif self._ids:
            self._ids.pop(topic_filter, None)

    def remove(self, topic_filter: str) -> None:
        self._exact.pop(topic_filter, None)
        self._wildcards.pop(topic_filter, None)
        if self._ids:
            self._ids.pop(topic_filter, None)

    def subscription_ids(self, topic: str) -> tuple[int, ...]:
        """The identifiers of every matching subscription that has one (MQTT 5 sends them
        all in the one PUBLISH, §3.3.4); bounded like the filters."""
        if not self._ids:
            return ()
        levels = topic.split("/")
        return tuple(
            sub_id
            for topic_filter, sub_id in self._ids.items()
            if policy.levels_match(topic_filter.split("/"), levels)
        )

    def qos_for(self, topic: str) -> int | None:
        """Highest granted QoS among matching filters; None if nothing matches."""
        best = self._exact.get(topic)
        if self._wildcards:
            levels = topic.split("/")
            for f_levels, qos in self._wildcards.values():
                if (best is None or qos > best) and policy.levels_match(f_levels, levels):
                    best = qos
        return best


def plan(subs: Subscriptions, downlink: Downlink) -> tuple[str, int] | None:
    """(topic, QoS) to publish this downlink with, or None if the device is not subscribed."""
    topic = policy.downlink_topic(downlink.device_id, downlink.kind)
    granted = subs.qos_for(topic)
    if granted is None:
        return None
    return topic, min(downlink.qos, granted)
