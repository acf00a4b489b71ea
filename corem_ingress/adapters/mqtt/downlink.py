"""A session's subscriptions and downlink delivery decisions. Pure.

The platform writes downlinks with ``corem-ingress downlink`` (recorded in the tenant's
downlink stream, fanned out to every node over pub/sub); the node holding the device's
MQTT session publishes it to ``devices/{id}/down/{kind}`` at
min(requested QoS, granted subscription QoS), if the device subscribed to that topic.
"""

from __future__ import annotations

import json

from corem_ingress.adapters.mqtt import policy
from corem_ingress.core.downlink import Downlink, downlink_topic

#: MQTT 5 Session Expiry Interval meaning "never expires".
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


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

    def to_json(self) -> str:
        """[[filter, granted QoS, subscription id or null], ...] (a persistent session's)."""
        ids = self._ids or {}
        rows: list[list[object]] = [[f, q, ids.get(f)] for f, q in self._exact.items()]
        rows += [[f, q, ids.get(f)] for f, (_levels, q) in self._wildcards.items()]
        return json.dumps(rows, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, limit: int) -> Subscriptions:
        """What ``to_json`` stored (at most ``limit`` filters; malformed rows are skipped)."""
        subs = cls()
        try:
            rows = json.loads(text) if text else []
        except ValueError:
            rows = []
        for row in rows if isinstance(rows, list) else []:
            if len(subs) >= limit:
                break
            if (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and row[1] in (0, 1)
                and (row[2] is None or isinstance(row[2], int))
            ):
                subs.add(row[0], row[1], row[2])
        return subs

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
    topic = downlink_topic(downlink.device_id, downlink.kind)
    granted = subs.qos_for(topic)
    if granted is None:
        return None
    return topic, min(downlink.qos, granted)


def session_terms(
    version: int, clean: bool, requested_expiry: int | None, expiry_max: int
) -> tuple[bool, int]:
    """(persistent, expiry seconds) of a new session.

    3.1.1: CleanSession 0 is persistent for ``mqtt.session_expiry_max_s``. MQTT 5: the
    Session Expiry Interval (absent: 0, the session ends with the connection), clamped to
    the maximum (0xFFFFFFFF "never" included); Clean Start only says whether a stored one
    is resumed."""
    if version != 5:
        return (False, 0) if clean else (True, expiry_max)
    expiry = requested_expiry or 0
    if expiry == SESSION_NEVER_EXPIRES or expiry > expiry_max:
        expiry = expiry_max
    return expiry > 0, expiry
