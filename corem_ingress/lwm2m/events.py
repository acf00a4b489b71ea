"""LwM2M events an operator follows (like Leshan's ``/api/event``): what they are, how they
are stored as stream fields, and how one is framed as a Server-Sent Event.

Pure: no Redis, no sockets. ``store/lwm2m_events.py`` appends them to the tenant's stream;
the admin API (``GET /api/v1/lwm2m/events``) and ``corem-ingress lwm2m events`` follow it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from corem_ingress.core.errors import InvalidArgument


class EventKind(StrEnum):
    REGISTERED = "registered"
    UPDATED = "updated"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    #: A queue-mode device sent a request after sleeping (its queued requests go out now).
    AWAKE = "awake"
    #: An observation ended: the device refused a notification, its session or its
    #: registration ended (``data.reason``).
    OBSERVATION_CANCELLED = "observation_cancelled"
    #: A queued request was answered by the device (``data.result``).
    REQUEST_DONE = "request_done"
    #: A queued request failed or passed its deadline (``data.error``).
    REQUEST_FAILED = "request_failed"
    #: A firmware update job changed state (``data.job``).
    FIRMWARE = "firmware"


#: A Redis stream entry id: what Last-Event-ID carries.
_EVENT_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")


def check_event_id(text: str) -> str:
    """A Last-Event-ID as the stream position to resume after; ``0`` means from the start."""
    if text == "0" or _EVENT_ID_RE.fullmatch(text):
        return text
    raise InvalidArgument("Last-Event-ID is an event id (e.g. 1700000000000-0) or 0")


@dataclass(frozen=True, slots=True)
class Lwm2mEvent:
    kind: EventKind
    tenant_id: str
    device_id: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        return {
            "kind": self.kind.value,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "at": repr(self.at),
            "data": json.dumps(dict(self.data), separators=(",", ":"), sort_keys=True),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Lwm2mEvent:
        try:
            data = json.loads(fields.get("data", "{}"))
            if not isinstance(data, dict):
                raise ValueError("data is not an object")
            return cls(
                EventKind(fields["kind"]),
                str(fields["tenant_id"]),
                str(fields["device_id"]),
                float(fields["at"]),
                data,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument("malformed LwM2M event", reason=repr(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "at": self.at,
            **({"data": dict(self.data)} if self.data else {}),
        }


def sse_frame(event_id: str, event: Lwm2mEvent) -> bytes:
    """One Server-Sent Event: ``id`` (the stream id, for Last-Event-ID), ``event`` (the kind)
    and ``data`` (the event as one line of JSON: no newline can split the field)."""
    data = json.dumps({"id": event_id, **event.to_json()}, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event.kind.value}\ndata: {data}\n\n".encode()


#: An SSE comment: keeps proxies from closing an idle stream.
SSE_KEEPALIVE = b": keepalive\n\n"

__all__ = [
    "SSE_KEEPALIVE",
    "EventKind",
    "Lwm2mEvent",
    "check_event_id",
    "sse_frame",
]
