"""The MQTT 3.1.1 server-side connection core, sans I/O (after aioquic/h11).

Inputs: ``receive_data(bytes, now)``, ``handle_timer(now)`` and the caller's decisions
(``accept``/``refuse``, ``ack_publish``, ``suback``, ``send_publish``, ``close``).
Outputs: events from ``next_event()`` and bytes from ``data_to_send()``. The clock is
an argument (monotonic seconds); a peer's protocol violation never raises: it becomes
a :class:`ConnectionClosed` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from corem_ingress.adapters.mqtt import codec
from corem_ingress.adapters.mqtt.codec import Ack, PacketType, Publish
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    Event,
    PublishReceived,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.core.causes import Cause


class State(Enum):
    AWAIT_CONNECT = "await_connect"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    #: Largest packet accepted (fixed header included); larger ones close the connection.
    max_packet_size: int = 64 * 1024
    #: Seconds from accept (TLS handshake included) to a complete CONNECT.
    connect_timeout: float = 10.0
    #: The keep-alive used when a client asks for 0 (none) or more than this.
    max_keepalive: int = 1200
    #: Unacknowledged QoS 1 downlinks per connection; more are refused (not queued).
    max_inflight: int = 16


class MqttConnection:
    """One client's MQTT session state. Not thread-safe; one per connection."""

    __slots__ = (
        "_buf",
        "_config",
        "_deadline",
        "_events",
        "_inflight",
        "_keepalive",
        "_last_rx",
        "_next_pid",
        "_out",
        "_qos2",
        "close_cause",
        "disconnected",
        "state",
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
        #: The client ended with DISCONNECT (MQTT 3.1.1: its will is then discarded).
        self.disconnected = False

    # -- inputs ------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            return
        self._buf += data
        self._last_rx = now
        if self.state is State.AUTHENTICATING:
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
    def accept(self, now: float, keepalive: int) -> None:
        """CONNACK 0 and start the session; parses whatever arrived in the meantime."""
        if self.state is not State.AUTHENTICATING:
            return
        ka = (
            keepalive if 0 < keepalive <= self._config.max_keepalive else self._config.max_keepalive
        )
        self._keepalive = ka * 1.5
        self._last_rx = now
        self.state = State.CONNECTED
        self._out.append(codec.encode_connack(False, 0))
        self._parse(now)

    def refuse(self, cause: Cause, detail: str = "") -> None:
        """CONNACK with the cause's return code, then close."""
        if self.state in (State.AWAIT_CONNECT, State.AUTHENTICATING):
            self._out.append(codec.encode_connack(False, cause.connack))
            self._close(cause, detail, error=True)

    def ack_publish(self, publish: Publish) -> None:
        """The message is stored: PUBACK (QoS 1) or PUBREC (QoS 2); nothing for QoS 0."""
        if self.state is not State.CONNECTED or publish.packet_id is None:
            return
        if publish.qos == 1:
            self._out.append(codec.encode_ack(PacketType.PUBACK, publish.packet_id))
        elif publish.qos == 2:
            if self._qos2 is None:
                self._qos2 = {}
            self._qos2[publish.packet_id] = True
            self._out.append(codec.encode_ack(PacketType.PUBREC, publish.packet_id))

    def suback(self, packet_id: int, return_codes: list[int]) -> None:
        if self.state is State.CONNECTED:
            self._out.append(codec.encode_suback(packet_id, return_codes))

    def send_publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Queue a PUBLISH to the client; False if closed or the inflight window is full."""
        if self.state is not State.CONNECTED:
            return False
        if qos == 0:
            self._out.append(codec.encode_publish(topic, payload, 0))
            return True
        if self._inflight is None:
            self._inflight = set()
        if len(self._inflight) >= self._config.max_inflight:
            return False
        pid = self._allocate_pid(self._inflight)
        self._inflight.add(pid)
        self._out.append(codec.encode_publish(topic, payload, 1, pid))
        return True

    @property
    def inflight(self) -> int:
        return len(self._inflight) if self._inflight else 0

    def close(self, cause: Cause, detail: str = "") -> None:
        """Local close (revocation, shutdown, policy): no further output."""
        self._close(cause, detail, error=False)

    # -- internals ---------------------------------------------------------------------------
    def _allocate_pid(self, inflight: set[int]) -> int:
        for _ in range(65535):
            pid = self._next_pid
            self._next_pid = pid % 65535 + 1
            if pid not in inflight:
                return pid
        raise RuntimeError("no free packet identifier")  # unreachable: max_inflight < 65535

    def _fail(self, cause: Cause, detail: str = "") -> None:
        self._close(cause, detail, error=True)

    def _close(self, cause: Cause, detail: str, *, error: bool) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_cause = cause
        self._buf.clear()
        self._events.append(ConnectionClosed(cause, error, detail))

    def _parse(self, now: float) -> None:
        buf = self._buf
        max_size = self._config.max_packet_size
        pos = 0
        try:
            while self.state in (State.AWAIT_CONNECT, State.CONNECTED) and pos < len(buf):
                try:
                    first = buf[pos]
                    if self.state is State.AWAIT_CONNECT and first != 0x10:
                        raise codec.ProtocolViolation("first packet is not CONNECT")
                    codec.check_first_byte(first)
                    framed = codec.frame(buf, max_size, pos)
                    if framed is None or len(buf) < pos + framed[2]:
                        return
                    _, header, total = framed
                    packet = codec.decode(first, bytes(buf[pos + header : pos + total]))
                    pos += total
                except codec.UnsupportedProtocolLevel as exc:
                    if self.state is State.AWAIT_CONNECT:
                        self._out.append(codec.encode_connack(False, 1))
                    self._fail(exc.cause, exc.reason)
                    return
                except codec.ProtocolViolation as exc:
                    self._fail(exc.cause, exc.reason)
                    return
                self._handle(packet, now)
        finally:
            if pos and self.state is not State.CLOSED:
                del buf[:pos]

    def _receive_qos2(self, packet_id: int | None) -> bool:
        """Whether a QoS 2 PUBLISH is new (to be reported); its id is known from now on.

        The id is recorded as soon as the PUBLISH is parsed, so a DUP re-send in the same
        read is recognised while the first copy is still being stored. At most
        ``max_inflight`` QoS 2 messages may await PUBREL; a client past it broke the
        window it was given (MQTT 5: Receive Maximum) and is disconnected.
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

    def _handle(self, packet: codec.Packet, now: float) -> None:
        if self.state is State.AWAIT_CONNECT:
            if not isinstance(packet, codec.Connect):
                self._fail(Cause.PROTOCOL_ERROR, "first packet is not CONNECT")
                return
            if not packet.client_id and not packet.clean_session:
                # [MQTT-3.1.3-8]: a zero-length client id needs CleanSession 1.
                self._out.append(codec.encode_connack(False, 2))
                self._fail(Cause.PROTOCOL_ERROR, "empty client id without clean session")
                return
            self.state = State.AUTHENTICATING
            self._events.append(ConnectReceived(packet))
            return
        if isinstance(packet, Publish):
            if packet.qos == 2 and not self._receive_qos2(packet.packet_id):
                return
            self._events.append(PublishReceived(packet))
        elif isinstance(packet, Ack):
            if packet.type is PacketType.PUBACK:
                if self._inflight:
                    self._inflight.discard(packet.packet_id)
            elif packet.type is PacketType.PUBREL:
                if self._qos2 and self._qos2.get(packet.packet_id) is False:
                    self._fail(Cause.PROTOCOL_ERROR, "PUBREL before PUBREC")
                    return
                if self._qos2:
                    self._qos2.pop(packet.packet_id, None)
                self._out.append(codec.encode_ack(PacketType.PUBCOMP, packet.packet_id))
            else:  # PUBREC/PUBCOMP: we never send QoS 2
                self._fail(Cause.PROTOCOL_ERROR, f"unexpected {packet.type.name}")
        elif isinstance(packet, codec.Subscribe):
            self._events.append(SubscribeReceived(packet))
        elif isinstance(packet, codec.Unsubscribe):
            self._out.append(codec.encode_unsuback(packet.packet_id))
            self._events.append(UnsubscribeReceived(packet))
        elif isinstance(packet, codec.PingReq):
            self._out.append(codec.PINGRESP)
        elif isinstance(packet, codec.Disconnect):
            self.disconnected = True
            self._close(Cause.PEER_CLOSED, "DISCONNECT", error=False)
        else:  # a second CONNECT
            self._fail(Cause.PROTOCOL_ERROR, "second CONNECT")
