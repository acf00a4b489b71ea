"""Topic and client-id policy: what a resolved device may do. Pure.

A device may publish only to ``devices/{device_id}/up/{kind}`` and subscribe only
inside ``devices/{device_id}/down/``. The device_id always comes from the resolved
credential, so a stolen credential can never speak for another device or tenant.
"""

from __future__ import annotations

from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import PermissionDenied
from corem_ingress.core.identity import DeviceIdentity
from corem_ingress.core.uplink import UplinkKind


def client_id_for(identity: DeviceIdentity, client_id: str, clean_session: bool) -> str:
    """The session's client id: must be the device_id; empty + clean session gets it."""
    if client_id == identity.device_id:
        return client_id
    if client_id == "" and clean_session:
        return identity.device_id
    raise PermissionDenied(
        "client id must equal the device id", cause=Cause.IDENTITY_MISMATCH, reason="client id"
    )


def uplink_kind(identity: DeviceIdentity, topic: str) -> UplinkKind:
    """The uplink kind of an allowed publish topic; PermissionDenied for any other topic."""
    prefix = f"devices/{identity.device_id}/up/"
    if not topic.startswith(prefix):
        raise PermissionDenied(
            "publish outside the device's uplink topics", cause=Cause.ACL_VIOLATION, reason="topic"
        )
    kind = topic[len(prefix) :]
    try:
        return UplinkKind(kind)
    except ValueError:
        raise PermissionDenied(
            "unknown uplink kind", cause=Cause.ACL_VIOLATION, reason="kind"
        ) from None


def subscribe_allowed(identity: DeviceIdentity, topic_filter: str) -> bool:
    """True only if every topic the filter can match lies under devices/{id}/down/."""
    levels = topic_filter.split("/")
    if len(levels) < 3 or levels[:3] != ["devices", identity.device_id, "down"]:
        return False
    # devices/{id}/down/# (also matches the parent level "devices/{id}/down": harmless, we
    # never publish there) or devices/{id}/down/<level or +>[/...].
    return len(levels) >= 4


def granted_qos(requested: int) -> int:
    """Downlinks go out at QoS 0 or 1."""
    return min(requested, 1)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching ('+' one level, trailing '#' the rest, parent included)."""
    return levels_match(topic_filter.split("/"), topic.split("/"))


def levels_match(f_levels: list[str], t_levels: list[str]) -> bool:
    """``topic_matches`` on filter and topic already split at '/'."""
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
