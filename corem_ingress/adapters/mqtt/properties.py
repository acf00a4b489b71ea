"""MQTT 5.0 properties and reason codes (OASIS MQTT 5.0 §2.2.2, §2.4): bytes <-> values.

Pure: no I/O. A property the packet may not carry, a duplicate of a single-valued one,
or a malformed value raises ``ProtocolViolation`` (the core disconnects with 0x81/0x82).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from corem_ingress.core.causes import Cause


class ProtocolViolation(Exception):
    """The peer broke MQTT; ``reason`` is for logs (never echoes payload bytes)."""

    #: A class attribute (ClassVar: compiled by mypyc, a plain one would be an instance
    #: attribute that Exception.__init__ never sets).
    cause: ClassVar[Cause] = Cause.PROTOCOL_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Prop(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class Reason(IntEnum):
    """The reason codes this broker sends (MQTT 5.0 §2.4)."""

    SUCCESS = 0x00
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    BAD_AUTHENTICATION_METHOD = 0x8C
    NOT_AUTHORIZED = 0x87
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    QUOTA_EXCEEDED = 0x97
    PAYLOAD_FORMAT_INVALID = 0x99
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E


#: Reason codes a server may put in DISCONNECT (§3.14.2.1); any other is sent as 0x80.
DISCONNECT_REASONS = frozenset(
    {0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94}
    | {0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2}
)

#: Reason codes a CONNACK may carry (§3.2.2.2); any other refusal is sent as 0x80.
CONNACK_REASONS = frozenset(
    {0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95}
    | {0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}
)

_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_TYPES = {
    Prop.PAYLOAD_FORMAT_INDICATOR: _BYTE,
    Prop.MESSAGE_EXPIRY_INTERVAL: _U32,
    Prop.CONTENT_TYPE: _STRING,
    Prop.RESPONSE_TOPIC: _STRING,
    Prop.CORRELATION_DATA: _BINARY,
    Prop.SUBSCRIPTION_IDENTIFIER: _VARINT,
    Prop.SESSION_EXPIRY_INTERVAL: _U32,
    Prop.ASSIGNED_CLIENT_IDENTIFIER: _STRING,
    Prop.SERVER_KEEP_ALIVE: _U16,
    Prop.AUTHENTICATION_METHOD: _STRING,
    Prop.AUTHENTICATION_DATA: _BINARY,
    Prop.REQUEST_PROBLEM_INFORMATION: _BYTE,
    Prop.WILL_DELAY_INTERVAL: _U32,
    Prop.REQUEST_RESPONSE_INFORMATION: _BYTE,
    Prop.RESPONSE_INFORMATION: _STRING,
    Prop.SERVER_REFERENCE: _STRING,
    Prop.REASON_STRING: _STRING,
    Prop.RECEIVE_MAXIMUM: _U16,
    Prop.TOPIC_ALIAS_MAXIMUM: _U16,
    Prop.TOPIC_ALIAS: _U16,
    Prop.MAXIMUM_QOS: _BYTE,
    Prop.RETAIN_AVAILABLE: _BYTE,
    Prop.USER_PROPERTY: _PAIR,
    Prop.MAXIMUM_PACKET_SIZE: _U32,
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}

_P = Prop
#: What a client may send in each packet (by name; §3.x.2.2). The will's properties are
#: under "WILL".
ALLOWED: dict[str, frozenset[Prop]] = {
    "CONNECT": frozenset(
        {
            _P.SESSION_EXPIRY_INTERVAL,
            _P.AUTHENTICATION_METHOD,
            _P.AUTHENTICATION_DATA,
            _P.REQUEST_PROBLEM_INFORMATION,
            _P.REQUEST_RESPONSE_INFORMATION,
            _P.RECEIVE_MAXIMUM,
            _P.TOPIC_ALIAS_MAXIMUM,
            _P.USER_PROPERTY,
            _P.MAXIMUM_PACKET_SIZE,
        }
    ),
    "WILL": frozenset(
        {
            _P.PAYLOAD_FORMAT_INDICATOR,
            _P.MESSAGE_EXPIRY_INTERVAL,
            _P.CONTENT_TYPE,
            _P.RESPONSE_TOPIC,
            _P.CORRELATION_DATA,
            _P.WILL_DELAY_INTERVAL,
            _P.USER_PROPERTY,
        }
    ),
    # A client never sends Subscription Identifier in PUBLISH: it is server-to-client.
    "PUBLISH": frozenset(
        {
            _P.PAYLOAD_FORMAT_INDICATOR,
            _P.MESSAGE_EXPIRY_INTERVAL,
            _P.CONTENT_TYPE,
            _P.RESPONSE_TOPIC,
            _P.CORRELATION_DATA,
            _P.TOPIC_ALIAS,
            _P.USER_PROPERTY,
        }
    ),
    "ACK": frozenset({_P.REASON_STRING, _P.USER_PROPERTY}),
    "SUBSCRIBE": frozenset({_P.SUBSCRIPTION_IDENTIFIER, _P.USER_PROPERTY}),
    "UNSUBSCRIBE": frozenset({_P.USER_PROPERTY}),
    "DISCONNECT": frozenset(
        {_P.SESSION_EXPIRY_INTERVAL, _P.REASON_STRING, _P.USER_PROPERTY, _P.SERVER_REFERENCE}
    ),
    "AUTH": frozenset(
        {_P.AUTHENTICATION_METHOD, _P.AUTHENTICATION_DATA, _P.REASON_STRING, _P.USER_PROPERTY}
    ),
}


@dataclass(frozen=True, slots=True)
class Properties:
    """Decoded properties: single values by identifier, user properties in order."""

    values: dict[Prop, int | str | bytes] = field(default_factory=dict)
    user: tuple[tuple[str, str], ...] = ()

    def int(self, prop: Prop, default: int | None = None) -> int | None:
        value = self.values.get(prop, default)
        assert value is None or isinstance(value, int)
        return value

    def str(self, prop: Prop) -> str | None:
        value = self.values.get(prop)
        assert value is None or isinstance(value, str)
        return value

    def __contains__(self, prop: Prop) -> bool:
        return prop in self.values


EMPTY = Properties()


# -- decoding -------------------------------------------------------------------------------------
def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of a Variable Byte Integer at ``data[pos:]``."""
    value = 0
    for i in range(4):
        if pos >= len(data):
            raise ProtocolViolation("packet truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ProtocolViolation("malformed variable byte integer")


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise ProtocolViolation("property truncated")


def _utf8(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("string is not valid UTF-8") from None
    if "\x00" in text:
        raise ProtocolViolation("string contains U+0000")
    return text


def _binary(data: bytes, pos: int) -> tuple[bytes, int]:
    _need(data, pos, 2)
    size = int.from_bytes(data[pos : pos + 2], "big")
    _need(data, pos + 2, size)
    return data[pos + 2 : pos + 2 + size], pos + 2 + size


def decode(data: bytes, pos: int, packet: str) -> tuple[Properties, int]:
    """The property block at ``data[pos:]`` (length first) of a ``packet`` (ALLOWED key)."""
    length, pos = read_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolViolation("properties truncated")
    allowed = ALLOWED[packet]
    block = data[:end]
    values: dict[Prop, int | str | bytes] = {}
    user: list[tuple[str, str]] = []
    while pos < end:
        ident, pos = read_varint(block, pos)
        try:
            prop = Prop(ident)
        except ValueError:
            raise ProtocolViolation(f"unknown property 0x{ident:02x}") from None
        if prop not in allowed:
            raise ProtocolViolation(f"{prop.name} not allowed in {packet}")
        kind = _TYPES[prop]
        value: int | str | bytes
        if kind == _BYTE:
            _need(block, pos, 1)
            value, pos = block[pos], pos + 1
        elif kind == _U16:
            _need(block, pos, 2)
            value, pos = int.from_bytes(block[pos : pos + 2], "big"), pos + 2
        elif kind == _U32:
            _need(block, pos, 4)
            value, pos = int.from_bytes(block[pos : pos + 4], "big"), pos + 4
        elif kind == _VARINT:
            value, pos = read_varint(block, pos)
        elif kind == _BINARY:
            value, pos = _binary(block, pos)
        else:
            raw, pos = _binary(block, pos)
            value = _utf8(raw)
            if kind == _PAIR:
                raw2, pos = _binary(block, pos)
                user.append((value, _utf8(raw2)))
                continue
        if prop in values:
            raise ProtocolViolation(f"{prop.name} given twice")
        values[prop] = value
    _check_values(values)
    return Properties(values, tuple(user)), end


def _check_values(values: dict[Prop, int | str | bytes]) -> None:
    """Values the spec calls a Protocol Error (§3.1.2.11, §3.3.2.3)."""
    for prop in (
        Prop.PAYLOAD_FORMAT_INDICATOR,
        Prop.REQUEST_PROBLEM_INFORMATION,
        Prop.REQUEST_RESPONSE_INFORMATION,
    ):
        if values.get(prop, 0) not in (0, 1):
            raise ProtocolViolation(f"{prop.name} is not 0 or 1")
    for prop in (Prop.RECEIVE_MAXIMUM, Prop.MAXIMUM_PACKET_SIZE, Prop.SUBSCRIPTION_IDENTIFIER):
        if values.get(prop) == 0:
            raise ProtocolViolation(f"{prop.name} is 0")


# -- encoding -------------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    """A Variable Byte Integer (also the fixed header's remaining length)."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def string(text: str) -> bytes:
    """A UTF-8 Encoded String: two length bytes, then the bytes."""
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def encode(items: list[tuple[Prop, int | str | bytes]]) -> bytes:
    """A property block (length first); user properties as (USER_PROPERTY, "k=v")."""
    body = bytearray()
    for prop, value in items:
        body += varint(prop)
        kind = _TYPES[prop]
        if kind == _BYTE:
            assert isinstance(value, int)
            body.append(value)
        elif kind == _U16:
            assert isinstance(value, int)
            body += value.to_bytes(2, "big")
        elif kind == _U32:
            assert isinstance(value, int)
            body += value.to_bytes(4, "big")
        elif kind == _VARINT:
            assert isinstance(value, int)
            body += varint(value)
        elif kind == _BINARY:
            assert isinstance(value, bytes)
            body += len(value).to_bytes(2, "big") + value
        elif kind == _PAIR:
            assert isinstance(value, str)
            key, _, val = value.partition("=")
            body += string(key) + string(val)
        else:
            assert isinstance(value, str)
            body += string(value)
    return varint(len(body)) + bytes(body)
