"""A small CoAP (RFC 7252) message codec for the server's hot path. Pure: bytes in, bytes out.

aiocoap's ``Message.decode`` builds an ``Options`` object, an enum member per option number
and an option object per value for every datagram, and its ``encode`` does the reverse:
most of a plain request's CPU. The endpoint decodes each datagram here first and answers
the plain ones itself (``PlainRequest``: an uplink, an Observe cancel, a ping, an ACK);
everything else still goes through aiocoap, so what is answered and how stays the same.

``decode`` is strict: it returns None for anything RFC 7252 3 calls a format error
(version, token length 9-15, a token or option running past the end, the reserved nibble
15, a payload marker with no payload) — the endpoint then lets aiocoap's path decide, which
keeps the answers to malformed messages exactly as they were. What it accepts, aiocoap
decodes to the same fields (pinned by tests/coap/test_codec.py).
"""

from __future__ import annotations

from typing import Final

#: Message types (RFC 7252 3).
CON: Final = 0
NON: Final = 1
ACK: Final = 2
RST: Final = 3

#: Option numbers the plain path reads.
OBSERVE: Final = 6
URI_PATH: Final = 11
CONTENT_FORMAT: Final = 12
URI_QUERY: Final = 15
ACCEPT: Final = 17

#: Codes the plain path answers with (class * 32 + detail).
EMPTY: Final = 0
GET: Final = 1
POST: Final = 2
PUT: Final = 3
DELETE: Final = 4
CHANGED: Final = 68  # 2.04
CONTENT: Final = 69  # 2.05
NOT_FOUND: Final = 132  # 4.04
METHOD_NOT_ALLOWED: Final = 133  # 4.05
INTERNAL_SERVER_ERROR: Final = 160  # 5.00

_PAYLOAD_MARKER: Final = 0xFF


class CoapMessage:
    """A decoded message: options as (number, value) in wire order (ascending numbers)."""

    __slots__ = ("code", "mid", "mtype", "options", "payload", "token")

    def __init__(
        self,
        mtype: int,
        code: int,
        mid: int,
        token: bytes,
        options: list[tuple[int, bytes]],
        payload: bytes,
    ) -> None:
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options
        self.payload = payload


class PlainRequest:
    """A GET/POST/PUT/DELETE carrying only Uri-Path, Uri-Query, Content-Format, Accept and
    at most one Observe (a short one): what the device site answers without aiocoap."""

    __slots__ = ("code", "mid", "mtype", "observe", "path", "payload", "token")

    def __init__(
        self,
        mtype: int,
        code: int,
        mid: int,
        token: bytes,
        path: tuple[str, ...],
        observe: int,
        payload: bytes,
    ) -> None:
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.path = path
        #: -1: no Observe option.
        self.observe = observe
        self.payload = payload


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of an option delta or length nibble; (-1, pos): invalid."""
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            return -1, pos
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 1 >= len(data):
            return -1, pos
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    return -1, pos  # 15: reserved (RFC 7252 3.1)


def decode(data: bytes) -> CoapMessage | None:
    """The message, or None if it is not a well-formed CoAP message."""
    n = len(data)
    if n < 4:
        return None
    first = data[0]
    tkl = first & 0x0F
    if first >> 6 != 1 or tkl > 8 or n < 4 + tkl:
        return None
    pos = 4 + tkl
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while pos < n:
        head = data[pos]
        pos += 1
        if head == _PAYLOAD_MARKER:
            if pos >= n:
                return None  # a marker with no payload (RFC 7252 3)
            payload = bytes(data[pos:])
            break
        delta, pos = _extended(head >> 4, data, pos)
        if delta < 0:
            return None
        length, pos = _extended(head & 0x0F, data, pos)
        if length < 0 or pos + length > n:
            return None
        number += delta
        options.append((number, bytes(data[pos : pos + length])))
        pos += length
    return CoapMessage(
        (first >> 4) & 3,
        data[1],
        (data[2] << 8) | data[3],
        bytes(data[4 : 4 + tkl]),
        options,
        payload,
    )


def plain_request(msg: CoapMessage) -> PlainRequest | None:
    """``msg`` as a plain request, or None (another code or type, another option, a repeated
    Observe, an option value longer than its RFC 7252 5.10 maximum, a Uri-Path or Uri-Query
    that is not UTF-8): the general path takes it."""
    code = msg.code
    if code < GET or code > DELETE or msg.mtype > NON:
        return None
    path: list[str] = []
    observe = -1
    for number, value in msg.options:
        if number in (URI_PATH, URI_QUERY):
            if len(value) > 255:
                return None
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return None  # aiocoap's path answers 4.02
            if number == URI_PATH:
                path.append(text)
        elif number == OBSERVE:
            if observe >= 0 or len(value) > 3:
                return None
            observe = int.from_bytes(value, "big")
        elif number in (CONTENT_FORMAT, ACCEPT):
            if len(value) > 2:
                return None
        else:
            return None
    return PlainRequest(msg.mtype, code, msg.mid, msg.token, tuple(path), observe, msg.payload)


def _field(value: int) -> tuple[int, bytes]:
    """(nibble, extension bytes) of an option delta or length."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
) -> bytes:
    """One message; ``options`` in ascending number order (repeats keep their order)."""
    out = bytearray(reply(mtype, code, mid, token))
    if options:
        last = 0
        for number, value in options:
            delta, ext_delta = _field(number - last)
            length, ext_length = _field(len(value))
            out.append((delta << 4) | length)
            out += ext_delta
            out += ext_length
            out += value
            last = number
    if payload:
        out.append(_PAYLOAD_MARKER)
        out += payload
    return bytes(out)


def reply(mtype: int, code: int, mid: int, token: bytes) -> bytes:
    """A reply without options or payload (2.04, a 2.05 with no body, 4.04, an RST)."""
    return bytes((0x40 | (mtype << 4) | len(token), code, (mid >> 8) & 0xFF, mid & 0xFF)) + token
