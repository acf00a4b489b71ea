"""What the MQTT connection core reports to its caller; drained with ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.adapters.mqtt.codec import Connect, Publish, Subscribe, Unsubscribe
from corem_ingress.core.causes import Cause


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    """A CONNECT arrived: authenticate, then call ``accept()`` or ``refuse(code)``."""

    connect: Connect


@dataclass(frozen=True, slots=True)
class PublishReceived:
    """An application message from the device; call ``ack_publish`` once it is stored."""

    publish: Publish


@dataclass(frozen=True, slots=True)
class PublishRefused:
    """An MQTT 5 PUBLISH the core refused (already answered with ``reason``): count it."""

    publish: Publish
    reason: int


@dataclass(frozen=True, slots=True)
class PublishAcknowledged:
    """The client PUBACKed one of our QoS 1 PUBLISHes (a persistent session's queued
    downlink leaves the queue only now)."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    """Decide per filter, then call ``suback(packet_id, codes)``."""

    subscribe: Subscribe


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    """Forget the filters; the core already queued the 3.1.1 UNSUBACK (MQTT 5: call
    ``unsuback(packet_id, reasons)``)."""

    unsubscribe: Unsubscribe


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is over: close the transport. ``error`` marks a peer fault or timeout."""

    cause: Cause
    error: bool
    #: Free text for the log (never echoes payload bytes).
    detail: str = ""


Event = PublishAcknowledged | (
    ConnectReceived
    | PublishReceived
    | PublishRefused
    | SubscribeReceived
    | UnsubscribeReceived
    | ConnectionClosed
)
