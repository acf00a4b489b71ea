"""Downlink: a message the platform sends to one device, delivered wherever its session lives."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core import json_text
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.json_text import JsonValue

#: Longest message expiry accepted (a week; a queued downlink also ends with its session).
MAX_EXPIRY_S = 7 * 24 * 3600
_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_downlink_kind(kind: str) -> str:
    """Downlink kinds become topic levels and URI paths: keep them to a-z, 0-9, '_' and '-'."""
    if not kind or len(kind) > 64 or not set(kind) <= _KIND_CHARS:
        raise InvalidArgument("downlink kind must be 1-64 characters of a-z, 0-9, '_' or '-'")
    return kind


def downlink_topic(device_id: str, kind: str) -> str:
    """The MQTT topic a downlink of ``kind`` goes to (what a device subscribes to)."""
    return f"devices/{device_id}/down/{kind}"


@dataclass(frozen=True, slots=True)
class Downlink:
    tenant_id: str
    device_id: str
    kind: str
    payload: JsonValue
    qos: int
    message_id: str
    created_at: float
    #: Unix time after which the downlink is not delivered (0: never). MQTT 5 devices get
    #: the time left as the Message Expiry Interval.
    expires_at: float = 0.0

    @classmethod
    def new(
        cls,
        tenant_id: str,
        device_id: str,
        kind: str,
        payload: JsonValue,
        *,
        qos: int,
        now: float,
        expiry_s: int | None = None,
    ) -> Downlink:
        if isinstance(qos, bool) or qos not in (0, 1):
            raise InvalidArgument("qos must be 0 or 1")
        if expiry_s is not None and (
            isinstance(expiry_s, bool)
            or not isinstance(expiry_s, int)
            or not 0 < expiry_s <= MAX_EXPIRY_S
        ):
            raise InvalidArgument(f"expiry must be 1..{MAX_EXPIRY_S} seconds")
        try:
            json_text.check(payload)  # the downlink stream stays valid UTF-8 JSON
        except json_text.JsonTextError as exc:
            raise InvalidArgument(f"payload {exc.reason}") from None
        expires_at = now + expiry_s if expiry_s else 0.0
        return cls(
            tenant_id,
            device_id,
            check_downlink_kind(kind),
            payload,
            qos,
            uuid.uuid4().hex,
            now,
            expires_at,
        )

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    def expiry_left(self, now: float) -> int | None:
        """Whole seconds left (at least 1) for the MQTT 5 Message Expiry Interval; None if
        the downlink never expires."""
        if not self.expires_at:
            return None
        return max(1, math.ceil(self.expires_at - now))

    def payload_bytes(self) -> bytes:
        """Wire bytes: strings as UTF-8 text, other JSON values as JSON."""
        if isinstance(self.payload, str):
            return self.payload.encode()
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def encode(self) -> str:
        return json.dumps(
            {
                "tenant_id": self.tenant_id,
                "device_id": self.device_id,
                "kind": self.kind,
                "payload": self.payload,
                "qos": self.qos,
                "message_id": self.message_id,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, data: str | bytes) -> Downlink:
        try:
            raw = json.loads(data)
            return cls(
                str(raw["tenant_id"]),
                str(raw["device_id"]),
                check_downlink_kind(str(raw["kind"])),
                raw["payload"],
                int(raw["qos"]),
                str(raw["message_id"]),
                float(raw["created_at"]),
                float(raw.get("expires_at") or 0.0),
            )
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ValueError(f"malformed downlink: {exc.__class__.__name__}") from None


class DeliveryState(StrEnum):
    """What happened to a downlink, as the API and the CLI report it (docs/mqtt.md)."""

    #: Written to a live session of the device (QoS 1 to a persistent session: it stays
    #: queued until the PUBACK, and is redelivered with DUP=1 if that never comes).
    DELIVERED = "delivered"
    #: Stored in the device's queue for its next connection (``queue_position``: 1 = next).
    QUEUED = "queued"
    #: Not stored for delivery (``reason`` says why).
    DROPPED = "dropped"


class DropReason(StrEnum):
    #: The device has no live session and no persistent session (nothing to queue for).
    NO_SESSION = "no_session"
    #: QoS 0 to a device that is not connected (QoS 0 is never queued).
    QOS0_OFFLINE = "qos0_offline"
    #: The live session holds no subscription matching the downlink's topic.
    NOT_SUBSCRIBED = "not_subscribed"
    #: The live session could not take it (closing, window full, too large, slow reader).
    NOT_DELIVERED = "not_delivered"
    #: Its message expiry passed before it could be delivered.
    EXPIRED = "expired"
    #: The queue was full: the oldest queued downlink made room for a newer one.
    QUEUE_FULL = "queue_full"


@dataclass(frozen=True, slots=True)
class DownlinkOutcome:
    """The answer to one downlink send (``to_json`` is what the API and the CLI print)."""

    state: DeliveryState
    message_id: str
    device_id: str
    stream_id: str
    reason: DropReason | None = None
    queue_position: int | None = None
    #: Message ids of older queued downlinks dropped to make room for this one.
    dropped_oldest: tuple[str, ...] = ()

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"state": self.state.value}
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.queue_position is not None:
            out["queue_position"] = self.queue_position
        if self.dropped_oldest:
            out["dropped_oldest"] = list(self.dropped_oldest)
        out.update(message_id=self.message_id, device_id=self.device_id, stream_id=self.stream_id)
        return out


def decide_live(reply: str | None, *, queued: bool) -> tuple[DeliveryState, DropReason | None]:
    """The state of a downlink from the delivering node's reply (None: no node answered
    within the wait). A queued downlink that no live session took stays queued."""
    if reply == DeliveryState.DELIVERED:
        return DeliveryState.DELIVERED, None
    if queued and reply != DropReason.NOT_SUBSCRIBED:
        return DeliveryState.QUEUED, None
    if reply is not None and reply in DropReason.__members__.values():
        return DeliveryState.DROPPED, DropReason(reply)
    return DeliveryState.DROPPED, DropReason.NOT_DELIVERED
