"""MQTT 3.1.1 and 5.0 wire format: bytes <-> packet dataclasses. Pure: no I/O, no clock.

Decoding raises :class:`ProtocolViolation` for anything the spec forbids; the
connection core turns that into a close of this connection only. ``version`` is the
CONNECT's protocol level (4: 3.1.1, 5: 5.0); MQTT 5 properties are in ``properties.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from corem_ingress.adapters.mqtt import properties as props
from corem_ingress.adapters.mqtt.properties import EMPTY, Properties, ProtocolViolation
from corem_ingress.core.causes import Cause

__all__ = ["EMPTY", "Properties", "ProtocolViolation"]


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    #: MQTT 5 only (reserved in 3.1.1).
    AUTH = 15


class PacketTooLarge(ProtocolViolation):
    cause: ClassVar[Cause] = Cause.MAX_SIZE


class UnsupportedProtocolLevel(ProtocolViolation):
    """A CONNECT of a protocol we know but at a level we do not speak: CONNACK 0x01 for an
    older level (MQTT 3.1.1 [MQTT-3.1.2-2]; also what an MQTT 3.1 "MQIsdp" client
    understands), an MQTT 5 CONNACK 0x84 for a newer one (MQTT 5.0 §3.1.2.2)."""

    def __init__(self, reason: str, level: int) -> None:
        super().__init__(reason)
        self.level = level


#: SUBACK return code of a refused topic filter.
SUBACK_FAILURE = 0x80
#: Fixed-header flags each packet type must carry (PUBLISH is checked separately).
_REQUIRED_FLAGS = {
    PacketType.PUBREL: 0b0010,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.UNSUBSCRIBE: 0b0010,
}
_MAX_REMAINING_LENGTH = 268_435_455


@dataclass(frozen=True, slots=True)
class Connect:
    protocol_level: int
    client_id: str
    clean_session: bool
    keepalive: int
    username: str | None
    password: bytes | None
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False
    #: MQTT 5 (empty for 3.1.1); ``clean_session`` is then Clean Start.
    properties: Properties = EMPTY
    will_properties: Properties = EMPTY


# Not frozen, unlike the other packets: one is built per PUBLISH, and mypyc leaves a
# frozen dataclass's __init__ to object.__setattr__ per field (~0.9 us against ~0.2 us
# mutable: issue 18). Treat it as a value all the same (``dataclasses.replace``).
@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    type: PacketType
    packet_id: int
    #: MQTT 5 reason code (0 when absent, and always for 3.1.1).
    reason: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    #: (topic filter, requested QoS)
    filters: tuple[tuple[str, int], ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    #: MQTT 5 reason code (0x04: "disconnect with will message").
    reason: int = 0
    properties: Properties = EMPTY


@dataclass(frozen=True, slots=True)
class Auth:
    """MQTT 5 enhanced authentication, which this broker does not offer."""

    reason: int = 0


Packet = Connect | Publish | Ack | Subscribe | Unsubscribe | PingReq | Disconnect | Auth


# -- framing -------------------------------------------------------------------------------------
def frame(
    buf: bytes | bytearray, max_packet_size: int, pos: int = 0
) -> tuple[int, int, int] | None:
    """(first byte, header length, total length) of the packet at ``buf[pos:]``.

    None if the fixed header is incomplete; the body may still be incomplete
    (``len(buf) < total``). Raises for a malformed length or an oversized packet
    (as soon as the length is known, before the body arrives).
    """
    n = len(buf) - pos
    if n < 2:
        return None
    remaining = 0
    multiplier = 1
    i = 1
    while True:
        if i >= n:
            return None
        byte = buf[pos + i]
        remaining += (byte & 0x7F) * multiplier
        i += 1
        if not byte & 0x80:
            break
        if i > 4:
            raise ProtocolViolation("malformed remaining length")
        multiplier *= 128
    total = i + remaining
    if total > max_packet_size:
        raise PacketTooLarge(f"packet of {total} bytes exceeds max_packet_size {max_packet_size}")
    return buf[pos], i, total


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolViolation("packet truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolViolation("packet truncated")
        value = int.from_bytes(self.data[self.pos : self.pos + 2], "big")
        self.pos += 2
        return value

    def binary(self) -> bytes:
        size = self.u16()
        if self.pos + size > len(self.data):
            raise ProtocolViolation("packet truncated")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("string is not valid UTF-8") from None
        if "\x00" in text:
            raise ProtocolViolation("string contains U+0000")
        return text

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value


def _packet_id(r: _Reader) -> int:
    pid = r.u16()
    if pid == 0:
        raise ProtocolViolation("packet identifier 0")
    return pid


def _check_topic_name(topic: str) -> str:
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolViolation("invalid topic name")
    return topic


def check_topic_filter(topic_filter: str) -> str:
    if not topic_filter:
        raise ProtocolViolation("empty topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ProtocolViolation("invalid '#' in topic filter")
        if "+" in level and level != "+":
            raise ProtocolViolation("invalid '+' in topic filter")
    return topic_filter


def _first_byte_table() -> dict[int, PacketType]:
    table: dict[int, PacketType] = {}
    for ptype in PacketType:
        for flags in range(16):
            if ptype is PacketType.PUBLISH or flags == _REQUIRED_FLAGS.get(ptype, 0):
                table[(ptype << 4) | flags] = ptype
    return table


_FIRST_BYTES = _first_byte_table()


def check_first_byte(first: int, version: int = 4) -> PacketType:
    """Packet type and flags, checked before the body arrives."""
    ptype = _FIRST_BYTES.get(first)
    if ptype is None or (ptype is PacketType.AUTH and version != 5):
        if first >> 4 == 0 or (first >> 4 == 15 and version != 5):
            raise ProtocolViolation("reserved packet type")
        raise ProtocolViolation(f"bad fixed-header flags for {PacketType(first >> 4).name}")
    return ptype


def decode(first: int, body: bytes, version: int = 4) -> Packet:
    """Decode one packet sent by a client, given its first byte, its body and the
    connection's protocol level (a CONNECT says its own)."""
    ptype = check_first_byte(first, version)
    flags = first & 0x0F
    if ptype is PacketType.PUBLISH:
        return _decode_publish(flags, body, version)
    r = _Reader(body)
    v5 = version == 5
    packet: Packet
    if ptype is PacketType.CONNECT:
        packet = _decode_connect(r)
    elif ptype in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        pid = _packet_id(r)
        reason = 0
        if v5 and r.remaining():
            reason = r.u8()
            if r.remaining():
                _properties(r, "ACK")
        packet = Ack(ptype, pid, reason)
    elif ptype is PacketType.SUBSCRIBE:
        pid = _packet_id(r)
        sub_props = _properties(r, "SUBSCRIBE") if v5 else EMPTY
        filters: list[tuple[str, int]] = []
        while r.remaining():
            topic_filter = check_topic_filter(r.string())
            options = r.u8()
            # 3.1.1: only the QoS bits; 5.0: QoS, No Local, Retain As Published and
            # Retain Handling (0..2), the top two bits reserved.
            if options & (0b11000000 if v5 else 0b11111100) or (options >> 4) & 0b11 == 3:
                raise ProtocolViolation("SUBSCRIBE with bad subscription options")
            if options & 0b11 > 2:
                raise ProtocolViolation("SUBSCRIBE with bad requested QoS")
            filters.append((topic_filter, options & 0b11))
        if not filters:
            raise ProtocolViolation("SUBSCRIBE without topic filters")
        packet = Subscribe(pid, tuple(filters), sub_props)
    elif ptype is PacketType.UNSUBSCRIBE:
        pid = _packet_id(r)
        unsub_props = _properties(r, "UNSUBSCRIBE") if v5 else EMPTY
        names: list[str] = []
        while r.remaining():
            names.append(check_topic_filter(r.string()))
        if not names:
            raise ProtocolViolation("UNSUBSCRIBE without topic filters")
        packet = Unsubscribe(pid, tuple(names), unsub_props)
    elif ptype is PacketType.PINGREQ:
        packet = PingReq()
    elif ptype is PacketType.DISCONNECT:
        reason, dis_props = 0, EMPTY
        if v5 and r.remaining():
            reason = r.u8()
            if r.remaining():
                dis_props = _properties(r, "DISCONNECT")
        packet = Disconnect(reason, dis_props)
    elif ptype is PacketType.AUTH:
        reason = r.u8() if r.remaining() else 0
        if r.remaining():
            _properties(r, "AUTH")
        packet = Auth(reason)
    else:
        raise ProtocolViolation(f"{ptype.name} is a server-to-client packet")
    if r.remaining():
        raise ProtocolViolation(f"trailing bytes in {ptype.name}")
    return packet


def _properties(r: _Reader, packet: str) -> Properties:
    decoded, r.pos = props.decode(r.data, r.pos, packet)
    return decoded


def _decode_publish(flags: int, body: bytes, version: int) -> Publish:
    """The hot path: no reader object."""
    qos = (flags >> 1) & 0b11
    if qos == 3:
        raise ProtocolViolation("PUBLISH with QoS 3")
    dup = bool(flags & 0b1000)
    if qos == 0 and dup:
        raise ProtocolViolation("DUP set on a QoS 0 PUBLISH")
    if len(body) < 2:
        raise ProtocolViolation("packet truncated")
    end = 2 + ((body[0] << 8) | body[1])
    if len(body) < end + (2 if qos else 0):
        raise ProtocolViolation("packet truncated")
    try:
        topic = body[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("string is not valid UTF-8") from None
    if "\x00" in topic:
        raise ProtocolViolation("string contains U+0000")
    if topic or version != 5:  # MQTT 5: empty when a Topic Alias names it
        _check_topic_name(topic)
    pid = None
    if qos:
        pid = (body[end] << 8) | body[end + 1]
        if pid == 0:
            raise ProtocolViolation("packet identifier 0")
        end += 2
    if version == 5:
        properties, end = props.decode(body, end, "PUBLISH")
        return Publish(topic, body[end:], qos, bool(flags & 1), dup, pid, properties)
    return Publish(topic, body[end:], qos, bool(flags & 1), dup, pid)


def _decode_connect(r: _Reader) -> Connect:
    # Name and level first: the rest of the packet is laid out per level.
    name = r.string()
    level = r.u8()
    if name == "MQIsdp" and level == 3:
        raise UnsupportedProtocolLevel("MQTT 3.1 is not supported", level)
    if name != "MQTT":
        # [MQTT-3.1.2-1]: a wrong protocol name (MQIsdp at any level but 3 included) is
        # not MQTT 3.1.1: disconnect without CONNACK.
        raise ProtocolViolation("not an MQTT CONNECT (protocol name)")
    if level not in (4, 5):
        raise UnsupportedProtocolLevel(f"unsupported protocol level {level}", level)
    v5 = level == 5
    flags = r.u8()
    if flags & 1:
        raise ProtocolViolation("CONNECT reserved flag set")
    keepalive = r.u16()
    connect_props = _properties(r, "CONNECT") if v5 else EMPTY
    client_id = r.string()
    will_flag = bool(flags & 0b100)
    will_qos = (flags >> 3) & 0b11
    will_retain = bool(flags & 0b100000)
    if not will_flag and (will_qos or will_retain):
        raise ProtocolViolation("will QoS/retain without a will")
    if will_qos == 3:
        raise ProtocolViolation("will QoS 3")
    will_topic = will_payload = None
    will_props = EMPTY
    if will_flag:
        if v5:
            will_props = _properties(r, "WILL")
        will_topic = _check_topic_name(r.string())
        will_payload = r.binary()
    username = r.string() if flags & 0b10000000 else None
    has_password = bool(flags & 0b1000000)
    if has_password and username is None and not v5:  # 5.0 allows a password alone
        raise ProtocolViolation("password without user name")
    password = r.binary() if has_password else None
    return Connect(
        level,
        client_id,
        bool(flags & 0b10),
        keepalive,
        username,
        password,
        will_topic,
        will_payload,
        will_qos,
        will_retain,
        connect_props,
        will_props,
    )


# -- encoding (server -> client) ---------------------------------------------------------------
def _remaining_length(n: int) -> bytes:
    if n > _MAX_REMAINING_LENGTH:
        raise ValueError("packet too large for MQTT")
    return props.varint(n)


_string = props.string


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def encode_connack(
    session_present: bool, return_code: int, properties: bytes | None = None
) -> bytes:
    """3.1.1 CONNACK, or MQTT 5 when ``properties`` (an encoded block) is given."""
    if properties is None:
        return bytes((0x20, 2, 1 if session_present else 0, return_code))
    return _packet(0x20, bytes((1 if session_present else 0, return_code)) + properties)


def encode_ack(ptype: PacketType, packet_id: int, reason: int = 0) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK(3.1.1); an MQTT 5 reason other than 0 is
    appended (the property length may then be omitted, §3.4.2.2)."""
    first = (ptype << 4) | (0b0010 if ptype is PacketType.PUBREL else 0)
    if reason:
        return bytes((first, 3)) + packet_id.to_bytes(2, "big") + bytes((reason,))
    return bytes((first, 2)) + packet_id.to_bytes(2, "big")


def encode_suback(
    packet_id: int, return_codes: list[int] | tuple[int, ...], *, v5: bool = False
) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"") + bytes(return_codes)
    return _packet(PacketType.SUBACK << 4, body)


def encode_unsuback(packet_id: int, reasons: list[int] | None = None) -> bytes:
    """3.1.1 UNSUBACK, or MQTT 5 with one reason code per filter."""
    if reasons is None:
        return encode_ack(PacketType.UNSUBACK, packet_id)
    return _packet(
        PacketType.UNSUBACK << 4, packet_id.to_bytes(2, "big") + b"\x00" + bytes(reasons)
    )


def encode_disconnect(reason: int) -> bytes:
    """MQTT 5 server DISCONNECT (3.1.1 has none: the server just closes)."""
    return bytes((PacketType.DISCONNECT << 4, 1, reason))


PINGRESP = bytes((PacketType.PINGRESP << 4, 0))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int | None = None,
    *,
    retain: bool = False,
    dup: bool = False,
    properties: bytes | None = None,
) -> bytes:
    """``properties``: an encoded MQTT 5 block (None: 3.1.1)."""
    first = (PacketType.PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (0b1000 if dup else 0)
    head = _string(topic)
    if qos:
        if not packet_id:
            raise ValueError("QoS > 0 needs a packet id")
        head += packet_id.to_bytes(2, "big")
    if properties is not None:
        head += properties
    return bytes((first,)) + _remaining_length(len(head) + len(payload)) + head + payload


def _props_block(p: Properties) -> bytes:
    items: list[tuple[props.Prop, int | str | bytes]] = list(p.values.items())
    items += [(props.Prop.USER_PROPERTY, f"{k}={v}") for k, v in p.user]
    return props.encode(items)


def encode_connect(c: Connect) -> bytes:
    """Client side (tests and the load generator); MQTT 5 when ``protocol_level`` is 5."""
    v5 = c.protocol_level == 5
    flags = 0b10 if c.clean_session else 0
    payload = _string(c.client_id)
    if c.will_topic is not None:
        flags |= 0b100 | (c.will_qos << 3) | (0b100000 if c.will_retain else 0)
        if v5:
            payload += _props_block(c.will_properties)
        payload += _string(c.will_topic) + len(c.will_payload or b"").to_bytes(2, "big")
        payload += c.will_payload or b""
    if c.username is not None:
        flags |= 0b10000000
        payload += _string(c.username)
    if c.password is not None:
        flags |= 0b1000000
        payload += len(c.password).to_bytes(2, "big") + c.password
    body = _string("MQTT") + bytes((c.protocol_level, flags)) + c.keepalive.to_bytes(2, "big")
    if v5:
        body += _props_block(c.properties)
    body += payload
    return _packet(PacketType.CONNECT << 4, body)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]], *, v5: bool = False) -> bytes:
    """Client side (tests and the load generator)."""
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"")
    body += b"".join(_string(f) + bytes((q,)) for f, q in filters)
    return _packet((PacketType.SUBSCRIBE << 4) | 0b0010, body)
