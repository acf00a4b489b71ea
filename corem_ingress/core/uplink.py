"""The uplink envelope: what every transport turns an accepted device message into."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core import json_text
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import DeviceIdentity
from corem_ingress.core.json_text import JsonValue
from corem_ingress.core.slots import new_instance, slot_setter

__all__ = [
    "JsonValue",
    "Transport",
    "Uplink",
    "UplinkKind",
    "new_message_id",
    "payload_from_bytes",
]


class UplinkKind(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    STATE = "state"

    @classmethod
    def parse(cls, value: object) -> UplinkKind:
        # A dict lookup, not ``cls(value)``: the Enum call is ~1 us per HTTP uplink.
        kind = _KINDS.get(str(value))
        if kind is None:
            raise InvalidArgument("kind must be one of: telemetry, event, state")
        return kind


_KINDS: dict[str, UplinkKind] = {k.value: k for k in UplinkKind}


class Transport(StrEnum):
    HTTP = "http"
    MQTT = "mqtt"
    COAP = "coap"
    LWM2M = "lwm2m"


@dataclass(frozen=True, slots=True)
class Uplink:
    tenant_id: str
    device_id: str
    transport: Transport
    kind: UplinkKind
    payload: JsonValue
    received_at: float
    message_id: str
    #: How ``payload`` was derived from the wire bytes: "json", "text" or "base64".
    payload_encoding: str = "json"
    #: MQTT 5 properties the device sent with the message (``content_type``,
    #: ``payload_format_indicator``, ``user_properties`` as [name, value] pairs in order),
    #: bounded by the MQTT core; None (no stream field) when it sent none.
    properties: dict[str, JsonValue] | None = None

    @classmethod
    def new(
        cls,
        identity: DeviceIdentity,
        transport: Transport,
        kind: UplinkKind,
        payload: JsonValue,
        *,
        now: float,
        payload_encoding: str = "json",
        properties: dict[str, JsonValue] | None = None,
    ) -> Uplink:
        # Built through the slots' descriptors: the frozen dataclass's __init__ (an
        # object.__setattr__ per field, called with keywords) was ~1.5 us per message.
        u = _NEW(cls)
        _SET_TENANT(u, identity.tenant_id)
        _SET_DEVICE(u, identity.device_id)
        _SET_TRANSPORT(u, transport)
        _SET_KIND(u, kind)
        _SET_PAYLOAD(u, payload)
        _SET_RECEIVED(u, now)
        _SET_MESSAGE_ID(u, new_message_id())
        _SET_ENCODING(u, payload_encoding)
        _SET_PROPERTIES(u, properties)
        return u

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for a Redis Stream entry; ``payload`` is JSON text."""
        fields = {
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "transport": self.transport.value,
            "kind": self.kind.value,
            "payload": json.dumps(self.payload, separators=(",", ":")),
            "payload_encoding": self.payload_encoding,
            "received_at": repr(self.received_at),
        }
        if self.properties is not None:
            fields["properties"] = json.dumps(self.properties, separators=(",", ":"))
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Uplink:
        return cls(
            tenant_id=fields["tenant_id"],
            device_id=fields["device_id"],
            transport=Transport(fields["transport"]),
            kind=UplinkKind(fields["kind"]),
            payload=json.loads(fields["payload"]),
            received_at=float(fields["received_at"]),
            message_id=fields["message_id"],
            payload_encoding=fields.get("payload_encoding", "json"),
            properties=json.loads(fields["properties"]) if "properties" in fields else None,
        )

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "transport": self.transport.value,
            "kind": self.kind.value,
            "payload": self.payload,
            "payload_encoding": self.payload_encoding,
            "received_at": self.received_at,
        }
        if self.properties is not None:
            out["properties"] = self.properties
        return out


#: The same object as the dataclass __init__ builds (a test holds them equal).
_NEW = new_instance
_SET_TENANT = slot_setter(Uplink, "tenant_id")
_SET_DEVICE = slot_setter(Uplink, "device_id")
_SET_TRANSPORT = slot_setter(Uplink, "transport")
_SET_KIND = slot_setter(Uplink, "kind")
_SET_PAYLOAD = slot_setter(Uplink, "payload")
_SET_RECEIVED = slot_setter(Uplink, "received_at")
_SET_MESSAGE_ID = slot_setter(Uplink, "message_id")
_SET_ENCODING = slot_setter(Uplink, "payload_encoding")
_SET_PROPERTIES = slot_setter(Uplink, "properties")

#: Message ids made ahead, from one ``os.urandom`` call per batch: the syscall per id was
#: half of ``new_message_id``'s cost. A forked child starts with none (no shared ids).
_IDS_BATCH = 256
_ids: list[str] = []


#: Byte maps setting the version (4) and variant (RFC 4122) bits of a UUID.
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _fresh_ids() -> list[str]:
    """``_IDS_BATCH`` version 4 UUIDs as hex: the bits set for all of them at once (byte 6
    and byte 8 of each 16), then one hex text cut in 32-digit pieces."""
    raw = bytearray(os.urandom(16 * _IDS_BATCH))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    text = raw.hex()
    return [text[i : i + 32] for i in range(0, 32 * _IDS_BATCH, 32)]


def new_message_id() -> str:
    """A random (version 4) UUID as 32 hex digits: ``uuid.uuid4().hex`` without building
    the UUID object, which was a tenth of the broker's CPU per MQTT QoS 0 message."""
    while True:
        try:
            return _ids.pop()
        except IndexError:  # empty: the next batch (a race with another thread is harmless)
            _ids.extend(_fresh_ids())


os.register_at_fork(after_in_child=_ids.clear)


def payload_from_bytes(data: bytes) -> tuple[JsonValue, str]:
    """Binary transports (MQTT, CoAP): strict JSON if it parses, else UTF-8 text, else base64.

    Nothing is refused and nothing is lost: a payload that is JSON only to Python (a lone
    surrogate escape, NaN, 1e999, nesting past the limit) is kept as its text, which every
    consumer of the stream can decode (``core/json_text.py``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"
    try:
        value = json_text.loads_decoded(text)
    except json_text.JsonTextError:
        return text, "text"
    return value, "json"
