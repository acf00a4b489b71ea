"""Downlink: a message the platform sends to one device, delivered wherever its session lives."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from corem_ingress.core import json_text
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.json_text import JsonValue

_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_downlink_kind(kind: str) -> str:
    """Downlink kinds become topic levels and URI paths: keep them to a-z, 0-9, '_' and '-'."""
    if not kind or len(kind) > 64 or not set(kind) <= _KIND_CHARS:
        raise InvalidArgument("downlink kind must be 1-64 characters of a-z, 0-9, '_' or '-'")
    return kind


@dataclass(frozen=True, slots=True)
class Downlink:
    tenant_id: str
    device_id: str
    kind: str
    payload: JsonValue
    qos: int
    message_id: str
    created_at: float

    @classmethod
    def new(
        cls, tenant_id: str, device_id: str, kind: str, payload: JsonValue, *, qos: int, now: float
    ) -> Downlink:
        if isinstance(qos, bool) or qos not in (0, 1):
            raise InvalidArgument("qos must be 0 or 1")
        try:
            json_text.check(payload)  # the downlink stream stays valid UTF-8 JSON
        except json_text.JsonTextError as exc:
            raise InvalidArgument(f"payload {exc.reason}") from None
        return cls(
            tenant_id, device_id, check_downlink_kind(kind), payload, qos, uuid.uuid4().hex, now
        )

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
            )
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ValueError(f"malformed downlink: {exc.__class__.__name__}") from None
