"""The MQTT 3.1.1 and 5.0 server-side connection core, sans I/O (after aioquic/h11).

Inputs: ``receive_data(bytes, now)``, ``handle_timer(now)`` and the caller's decisions
(``accept``/``refuse``, ``ack_publish``, ``suback``, ``send_publish``, ``close``).
Outputs: events from ``next_event()`` and bytes from ``data_to_send()``. The clock is
an argument (monotonic seconds); a peer's protocol violation never raises: it becomes
a :class:`ConnectionClosed` event. An MQTT 5 connection that the server ends after its
CONNACK first gets a DISCONNECT with the cause's reason code (``Cause.mqtt5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from corem_ingress.adapters.mqtt import codec
from corem_ingress.adapters.mqtt.codec import Ack, PacketType, Publish
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    Event,
    PublishAcknowledged,
    PublishReceived,
    PublishRefused,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.adapters.mqtt.properties import (
    CONNACK_REASONS,
    DISCONNECT_REASONS,
    Prop,
    Properties,
    Reason,
)
from corem_ingress.adapters.mqtt.properties import encode as props_encode
from corem_ingress.core.causes import Cause
from corem_ingress.core.slots import new_instance, slot_setter


class State(Enum):
    AWAIT_CONNECT = "await_connect"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


# The members read for every packet, as module constants: reading a member off an Enum
# class costs ten times a global's on CPython 3.11 (issue 18: several per PUBLISH).
_AWAIT_CONNECT: Final = State.AWAIT_CONNECT
_AUTHENTICATING: Final = State.AUTHENTICATING
_CONNECTED: Final = State.CONNECTED
_CLOSED: Final = State.CLOSED
_PUBACK: Final = PacketType.PUBACK


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    #: Largest packet accepted (fixed header included); larger ones close the connection.
    max_packet_size: int = 64 * 1024
    #: Seconds from accept (TLS handshake included) to a complete CONNECT.
    connect_timeout: float = 10.0
    #: The keep-alive used when a client asks for 0 (none) or more than this.
    max_keepalive: int = 1200
    #: Unacknowledged QoS 1 downlinks per connection; more are refused (not queued). Also
    #: the QoS 2 uplinks that may await PUBREL, and the MQTT 5 Receive Maximum announced.
    max_inflight: int = 16
    #: MQTT 5 Topic Alias Maximum announced (inbound aliases kept per connection).
    topic_alias_maximum: int = 16


#: MQTT 5 uplink properties carried into the envelope are bounded: at most this many
#: User Properties, and this many UTF-8 bytes of their names and values plus the Content
#: Type. A PUBLISH over either gets reason 0x97 (quota exceeded) and is not stored.
MAX_USER_PROPERTIES = 16
MAX_PROPERTY_BYTES = 1024


class MqttConnection:
    """One client's MQTT session state. Not thread-safe; one per connection."""

    __slots__ = (
        "_aliases",
        "_buf",
        "_client_max_packet",
        "_client_receive_max",
        "_config",
        "_deadline",
        "_events",
        "_inflight",
        "_keepalive",
        "_last_rx",
        "_next_pid",
        "_out",
        "_qos2",
        "_session_expiry",
        "close_cause",
        "disconnected",
        "state",
        "version",
    )

    def __init__(self, config: ConnectionConfig, now: float) -> None:
        self._config = config
        self.state = State.AWAIT_CONNECT
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._events: list[Event] = []  # a deque costs ~700 B even when empty
        self._deadline = now + config.connect_timeout
        self._keepalive = 0.0
        self._last_rx = now
        # Created on first use: an empty set costs ~200 B per idle connection.
        self._inflight: set[int] | None = None
        #: QoS 2 packet ids received and not yet released: False while the caller stores
        #: the message, True once its PUBREC went out (then awaiting PUBREL).
        self._qos2: dict[int, bool] | None = None
        self._next_pid = 1
        self.close_cause: Cause | None = None
        #: The client ended with DISCONNECT (its will is then discarded; MQTT 5 reason
        #: 0x04 "with will message" keeps it).
        self.disconnected = False
        #: The CONNECT's protocol level: 4 (3.1.1) or 5 (5.0).
        self.version = 4
        # MQTT 5 only: what the client announced, inbound topic aliases.
        self._client_max_packet: int | None = None
        self._client_receive_max = 65535
        self._aliases: dict[int, str] | None = None
        #: MQTT 5: the Session Expiry Interval the CONNECT asked for (None: absent).
        self._session_expiry: int | None = None

    # -- inputs ------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is _CLOSED:
            return
        self._buf += data
        self._last_rx = now
        if self.state is _AUTHENTICATING:
            # The client may send before CONNACK; keep it (bounded) until accept().
            if len(self._buf) > 2 * self._config.max_packet_size:
                self._fail(Cause.MAX_SIZE, "too much data before CONNACK")
            return
        self._parse(now)

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self.state in (State.AWAIT_CONNECT, State.AUTHENTICATING):
            if self.state is State.AWAIT_CONNECT and now >= self._deadline:
                self._fail(Cause.HANDSHAKE_TIMEOUT, "no CONNECT within connect_timeout")
            return
        if now >= self._last_rx + self._keepalive:
            self._fail(Cause.IDLE, "keep-alive expired")

    def next_timer(self) -> float | None:
        """When ``handle_timer`` should next be called (monotonic), or None."""
        if self.state is State.AWAIT_CONNECT:
            return self._deadline
        if self.state is State.CONNECTED:
            return self._last_rx + self._keepalive
        return None

    # -- outputs -----------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    # -- decisions ---------------------------------------------------------------------------
    @property
    def requested_session_expiry(self) -> int | None:
        """MQTT 5: the CONNECT's Session Expiry Interval (None when absent, or 3.1.1)."""
        return self._session_expiry

    def accept(
        self,
        now: float,
        keepalive: int,
        *,
        assigned_client_id: str | None = None,
        session_present: bool = False,
        session_expiry: int = 0,
    ) -> None:
        """CONNACK 0 and start the session; parses whatever arrived in the meantime.

        ``assigned_client_id``: the id the server gave a client that sent an empty one
        (MQTT 5 tells it in the CONNACK). ``session_present``: a stored session was
        resumed. ``session_expiry``: the seconds granted (MQTT 5 says so when it differs
        from what the client asked)."""
        if self.state is not State.AUTHENTICATING:
            return
        cfg = self._config
        ka = keepalive if 0 < keepalive <= cfg.max_keepalive else cfg.max_keepalive
        self._keepalive = ka * 1.5
        self._last_rx = now
        self.state = State.CONNECTED
        if self.version == 5:
            props = self._connack_properties(ka, keepalive, assigned_client_id, session_expiry)
            self._out.append(codec.encode_connack(session_present, 0, props))
        else:
            self._out.append(codec.encode_connack(session_present, 0))
        self._parse(now)

    def _connack_properties(
        self, keepalive: int, requested: int, assigned_client_id: str | None, session_expiry: int
    ) -> bytes:
        cfg = self._config
        items: list[tuple[Prop, int | str | bytes]] = [
            (Prop.RECEIVE_MAXIMUM, min(cfg.max_inflight, 65535)),
            (Prop.MAXIMUM_PACKET_SIZE, cfg.max_packet_size),
            (Prop.TOPIC_ALIAS_MAXIMUM, cfg.topic_alias_maximum),
            (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
        ]
        if keepalive != requested:
            items.append((Prop.SERVER_KEEP_ALIVE, keepalive))
        if assigned_client_id is not None:
            items.append((Prop.ASSIGNED_CLIENT_IDENTIFIER, assigned_client_id))
        if (self._session_expiry or 0) != session_expiry:
            # Clamped to mqtt.session_expiry_max_s: the client learns what it got.
            items.append((Prop.SESSION_EXPIRY_INTERVAL, session_expiry))
        return props_encode(items)

    def refuse(self, cause: Cause, detail: str = "") -> None:
        """CONNACK with the cause's return code (MQTT 5: reason code), then close."""
        if self.state in (State.AWAIT_CONNECT, State.AUTHENTICATING):
            if self.version == 5:
                code = cause.mqtt5 if cause.mqtt5 in CONNACK_REASONS else Reason.UNSPECIFIED_ERROR
                self._out.append(codec.encode_connack(False, code, b"\x00"))
            else:
                self._out.append(codec.encode_connack(False, cause.connack))
            self._close(cause, detail, error=True)

    def ack_publish(self, publish: Publish) -> None:
        """The message is stored: PUBACK (QoS 1) or PUBREC (QoS 2); nothing for QoS 0."""
        if self.state is not _CONNECTED or publish.packet_id is None:
            return
        if publish.qos == 1:
            self._out.append(codec.encode_ack(_PUBACK, publish.packet_id))
        elif publish.qos == 2:
            if self._qos2 is None:
                self._qos2 = {}
            self._qos2[publish.packet_id] = True
            self._out.append(codec.encode_ack(PacketType.PUBREC, publish.packet_id))

    def suback(self, packet_id: int, return_codes: list[int]) -> None:
        if self.state is State.CONNECTED:
            self._out.append(codec.encode_suback(packet_id, return_codes, v5=self.version == 5))

    def unsuback(self, packet_id: int, reasons: list[int]) -> None:
        """MQTT 5 UNSUBACK with a reason per filter (3.1.1's went out on receipt)."""
        if self.state is State.CONNECTED and self.version == 5:
            self._out.append(codec.encode_unsuback(packet_id, reasons))

    def send_publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        subscription_ids: tuple[int, ...] = (),
        *,
        extra_properties: Sequence[tuple[Prop, int | str | bytes]] = (),
    ) -> bool:
        """Queue a PUBLISH to the client; False if closed, the inflight window is full or
        (MQTT 5) the packet exceeds the client's Maximum Packet Size. MQTT 5 carries the
        matching subscriptions' identifiers (and ``extra_properties``: a reply's
        Correlation Data)."""
        if self.state is not State.CONNECTED:
            return False
        v5_props = None
        if self.version == 5:
            items: list[tuple[Prop, int | str | bytes]] = list(extra_properties)
            items += [(Prop.SUBSCRIPTION_IDENTIFIER, i) for i in subscription_ids]
            v5_props = props_encode(items)
        if qos == 0:
            packet = codec.encode_publish(topic, payload, 0, properties=v5_props)
            if not self._fits_client(packet):
                return False
            self._out.append(packet)
            return True
        return bool(self.publish_qos1(topic, payload, subscription_ids))

    def publish_qos1(
        self,
        topic: str,
        payload: bytes,
        subscription_ids: tuple[int, ...] = (),
        *,
        dup: bool = False,
        message_expiry: int | None = None,
    ) -> int | None:
        """Queue a QoS 1 PUBLISH; returns its packet id, None if the window is full (or the
        connection is not up), 0 if the packet exceeds the client's Maximum Packet Size
        (it never will fit). MQTT 5: the time left of a message expiry goes with it."""
        if self.state is not State.CONNECTED:
            return None
        if self._inflight is None:
            self._inflight = set()
        if len(self._inflight) >= self.send_window:
            return None
        v5_props = None
        if self.version == 5:
            items: list[tuple[Prop, int | str | bytes]] = [
                (Prop.SUBSCRIPTION_IDENTIFIER, i) for i in subscription_ids
            ]
            if message_expiry is not None:
                items.append((Prop.MESSAGE_EXPIRY_INTERVAL, message_expiry))
            v5_props = props_encode(items)
        pid = self._allocate_pid(self._inflight)
        packet = codec.encode_publish(topic, payload, 1, pid, dup=dup, properties=v5_props)
        if not self._fits_client(packet):
            self._next_pid = pid  # unused: the next downlink takes it
            return 0
        self._inflight.add(pid)
        self._out.append(packet)
        return pid

    @property
    def send_window(self) -> int:
        """Unacknowledged QoS 1 PUBLISHes we may have out (ours and the client's limit)."""
        return min(self._config.max_inflight, self._client_receive_max)

    def _fits_client(self, packet: bytes) -> bool:
        return self._client_max_packet is None or len(packet) <= self._client_max_packet

    @property
    def inflight(self) -> int:
        return len(self._inflight) if self._inflight else 0

    def close(self, cause: Cause, detail: str = "") -> None:
        """Local close (revocation, shutdown, policy): MQTT 5 gets a DISCONNECT with the
        cause's reason code, then no further output."""
        self._close(cause, detail, error=False)

    # -- internals ---------------------------------------------------------------------------
    def _allocate_pid(self, inflight: set[int]) -> int:
        for _ in range(65535):
            pid = self._next_pid
            self._next_pid = pid % 65535 + 1
            if pid not in inflight:
                return pid
        raise RuntimeError("no free packet identifier")  # unreachable: max_inflight < 65535

    def _fail(self, cause: Cause, detail: str = "", reason: int | None = None) -> None:
        """Close for the peer's fault; ``reason`` overrides the cause's MQTT 5 code."""
        self._close(cause, detail, error=True, reason=reason)

    def _close(self, cause: Cause, detail: str, *, error: bool, reason: int | None = None) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CONNECTED and self.version == 5 and cause is not Cause.PEER_CLOSED:
            code = cause.mqtt5 if reason is None else reason
            if code not in DISCONNECT_REASONS:
                code = Reason.UNSPECIFIED_ERROR
            self._out.append(codec.encode_disconnect(code))
        self.state = State.CLOSED
        self.close_cause = cause
        self._buf.clear()
        self._events.append(ConnectionClosed(cause, error, detail))

    def _parse(self, now: float) -> None:
        buf = self._buf
        max_size = self._config.max_packet_size
        pos = 0
        try:
            while pos < len(buf):
                state = self.state
                if state is not _CONNECTED and state is not _AWAIT_CONNECT:
                    return
                try:
                    first = buf[pos]
                    if state is _AWAIT_CONNECT and first != 0x10:
                        raise codec.ProtocolViolation("first packet is not CONNECT")
                    codec.check_first_byte(first, self.version)
                    framed = codec.frame(buf, max_size, pos)
                    if framed is None or len(buf) < pos + framed[2]:
                        return
                    _, header, total = framed
                    packet = codec.decode(
                        first, bytes(buf[pos + header : pos + total]), self.version
                    )
                    pos += total
                except codec.UnsupportedProtocolLevel as exc:
                    if self.state is State.AWAIT_CONNECT and exc.level > 5:
                        self._out.append(
                            codec.encode_connack(
                                False, Reason.UNSUPPORTED_PROTOCOL_VERSION, b"\x00"
                            )
                        )
                    elif self.state is State.AWAIT_CONNECT:
                        self._out.append(codec.encode_connack(False, 1))
                    self._fail(exc.cause, exc.reason)
                    return
                except codec.ProtocolViolation as exc:
                    self._fail(exc.cause, exc.reason)
                    return
                self._handle(packet, now)
        finally:
            if pos and self.state is not _CLOSED:
                del buf[:pos]

    def _receive_qos2(self, packet_id: int | None) -> bool:
        """Whether a QoS 2 PUBLISH is new (to be reported); its id is known from now on.

        The id is recorded as soon as the PUBLISH is parsed, so a DUP re-send in the same
        read is recognised while the first copy is still being stored. At most
        ``max_inflight`` QoS 2 messages may await PUBREL; a client past it broke the
        window it was given (MQTT 5: Receive Maximum) and is disconnected (0x93). QoS 1
        past the window is not: the adapter stops reading until PUBACKs catch up, as
        for 3.1.1 (paho-mqtt 2.2 ignores the Receive Maximum and sends up to 20).
        """
        assert packet_id is not None  # the codec requires one for QoS > 0
        if self._qos2 is None:
            self._qos2 = {}
        acked = self._qos2.get(packet_id)
        if acked is not None:
            if acked:  # stored and PUBREC sent (lost on the way?): say it again
                self._out.append(codec.encode_ack(PacketType.PUBREC, packet_id))
            # else still being stored: its PUBREC follows from ack_publish
            return False
        if len(self._qos2) >= self._config.max_inflight:
            self._fail(Cause.RECEIVE_MAXIMUM, "too many QoS 2 messages awaiting PUBREL")
            return False
        self._qos2[packet_id] = False
        return True

    def _start_connect(self, packet: codec.Connect) -> None:
        self.version = packet.protocol_level
        if self.version == 5:
            p = packet.properties
            if Prop.AUTHENTICATION_METHOD in p:
                # Enhanced authentication (AUTH exchanges) is not offered.
                self._out.append(
                    codec.encode_connack(False, Reason.BAD_AUTHENTICATION_METHOD, b"\x00")
                )
                self._fail(Cause.PROTOCOL_ERROR, "enhanced authentication not supported")
                return
            wp = packet.will_properties
            if packet.will_topic is not None and (
                len(wp.user) > MAX_USER_PROPERTIES or _properties_bytes(wp) > MAX_PROPERTY_BYTES
            ):
                # Will properties go into the will's uplink envelope: bounded like a PUBLISH's.
                self._out.append(codec.encode_connack(False, Reason.QUOTA_EXCEEDED, b"\x00"))
                self._fail(Cause.PROTOCOL_ERROR, "will properties over the bounds")
                return
            self._client_max_packet = p.int(Prop.MAXIMUM_PACKET_SIZE)
            self._client_receive_max = p.int(Prop.RECEIVE_MAXIMUM, 65535) or 65535
            self._session_expiry = p.int(Prop.SESSION_EXPIRY_INTERVAL)
        elif not packet.client_id and not packet.clean_session:
            # [MQTT-3.1.3-8]: a zero-length client id needs CleanSession 1 (MQTT 5 assigns one).
            self._out.append(codec.encode_connack(False, 2))
            self._fail(Cause.PROTOCOL_ERROR, "empty client id without clean session")
            return
        self.state = State.AUTHENTICATING
        self._events.append(ConnectReceived(packet))

    def _publish_v5(self, packet: Publish) -> Publish | None:
        """Topic alias, Payload Format Indicator and property bounds of an MQTT 5 PUBLISH;
        None if it was refused (answered here, or the connection closed)."""
        p = packet.properties
        alias = p.int(Prop.TOPIC_ALIAS)
        topic = packet.topic
        if alias is not None:
            if not 0 < alias <= self._config.topic_alias_maximum:
                self._fail(Cause.PROTOCOL_ERROR, "topic alias invalid", Reason.TOPIC_ALIAS_INVALID)
                return None
            if self._aliases is None:
                self._aliases = {}
            if topic:
                self._aliases[alias] = topic
            elif (known := self._aliases.get(alias)) is not None:
                topic = known
            else:
                self._fail(Cause.PROTOCOL_ERROR, "unknown topic alias")
                return None
        elif not topic:
            self._fail(Cause.PROTOCOL_ERROR, "empty topic without a topic alias")
            return None
        refusal = None
        if p.int(Prop.PAYLOAD_FORMAT_INDICATOR) == 1 and not _is_utf8(packet.payload):
            refusal = Reason.PAYLOAD_FORMAT_INVALID
        elif len(p.user) > MAX_USER_PROPERTIES or _property_bytes(packet) > MAX_PROPERTY_BYTES:
            refusal = Reason.QUOTA_EXCEEDED
        if refusal is not None:
            if packet.packet_id is not None:
                ack = PacketType.PUBACK if packet.qos == 1 else PacketType.PUBREC
                self._out.append(codec.encode_ack(ack, packet.packet_id, refusal))
            self._events.append(PublishRefused(packet, refusal))
            return None
        return packet if topic == packet.topic else replace(packet, topic=topic)

    def _handle(self, packet: codec.Packet, now: float) -> None:
        if self.state is _AWAIT_CONNECT:
            if not isinstance(packet, codec.Connect):
                self._fail(Cause.PROTOCOL_ERROR, "first packet is not CONNECT")
                return
            self._start_connect(packet)
            return
        v5 = self.version == 5
        if isinstance(packet, Publish):
            if v5:
                checked = self._publish_v5(packet)
                if checked is None:
                    return
                packet = checked
            if packet.qos == 2 and not self._receive_qos2(packet.packet_id):
                return
            self._events.append(_publish_received(packet))
        elif isinstance(packet, Ack):
            if packet.type is _PUBACK:
                if self._inflight and packet.packet_id in self._inflight:
                    self._inflight.discard(packet.packet_id)
                    self._events.append(PublishAcknowledged(packet.packet_id))
            elif packet.type is PacketType.PUBREL:
                state = self._qos2.pop(packet.packet_id, None) if self._qos2 else None
                if state is False:
                    self._fail(Cause.PROTOCOL_ERROR, "PUBREL before PUBREC")
                    return
                unknown = v5 and state is None
                reason = Reason.PACKET_IDENTIFIER_NOT_FOUND if unknown else 0
                self._out.append(codec.encode_ack(PacketType.PUBCOMP, packet.packet_id, reason))
            else:  # PUBREC/PUBCOMP: we never send QoS 2
                self._fail(Cause.PROTOCOL_ERROR, f"unexpected {packet.type.name}")
        elif isinstance(packet, codec.Subscribe):
            self._events.append(SubscribeReceived(packet))
        elif isinstance(packet, codec.Unsubscribe):
            if not v5:
                self._out.append(codec.encode_unsuback(packet.packet_id))
            self._events.append(UnsubscribeReceived(packet))
        elif isinstance(packet, codec.PingReq):
            self._out.append(codec.PINGRESP)
        elif isinstance(packet, codec.Disconnect):
            # MQTT 5 reason 0x04: "disconnect with will message" (the will stays).
            self.disconnected = packet.reason != 0x04
            self._close(Cause.PEER_CLOSED, "DISCONNECT", error=False)
        elif isinstance(packet, codec.Auth):
            # No CONNECT carried an Authentication Method (it would have been refused).
            self._fail(Cause.PROTOCOL_ERROR, "AUTH without enhanced authentication")
        else:  # a second CONNECT
            self._fail(Cause.PROTOCOL_ERROR, "second CONNECT")


_set_publish = slot_setter(PublishReceived, "publish")


def _publish_received(publish: Publish) -> PublishReceived:
    """``PublishReceived(publish)`` without the frozen dataclass's ``__init__`` (one per
    PUBLISH: ``core/slots.py``). A test holds them equal."""
    event = new_instance(PublishReceived)
    _set_publish(event, publish)
    return event


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _property_bytes(publish: Publish) -> int:
    return _properties_bytes(publish.properties)


def _properties_bytes(p: Properties) -> int:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in p.user)
    content_type = p.str(Prop.CONTENT_TYPE)
    return size + (len(content_type.encode()) if content_type else 0)
