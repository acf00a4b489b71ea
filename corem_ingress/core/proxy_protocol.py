"""The PROXY protocol header (v2 binary, and v1 text as nginx sends it) at the start of a TCP
connection from a load balancer: who the client really is.

Pure: bytes in, a decision out. ``ProxyPreamble`` is fed the first bytes of one connection
and decides, once, which address the connection stands for:

* from a trusted proxy: the header's source address (``LOCAL``/``UNKNOWN``: the proxy's own
  connection, e.g. a health check: the proxy's address); no header: refused when the
  listener requires one, else the proxy's address;
* from any other address: a header is refused (a client must not choose its own address);
  no header: the peer's own address.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (v1 §2.1, v2 §2.2).
Only TCP over IPv4/IPv6 carries an address; TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import StrEnum

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: v1: the longest line, CRLF included (spec §2.1).
V1_MAX_BYTES = 107
#: v2: the largest address + TLV block accepted (the spec's practical bound is 536 bytes of
#: header; a larger one is not a load balancer's and would only make us buffer).
V2_MAX_PAYLOAD = 2048
_V2_FIXED = 16

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM = 0x0, 0x1


class ProxyMode(StrEnum):
    """A listener's ``proxy_protocol`` setting."""

    #: No PROXY header is read: the TCP peer is the client.
    OFF = "off"
    #: Trusted proxies may send one (their connections without one stand for themselves).
    OPTIONAL = "optional"
    #: Connections from trusted proxies must start with one.
    REQUIRED = "required"


class ProxyHeaderError(ValueError):
    """The connection must be refused; the message says why (for the log, never the bytes)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    #: The client's address and port; None for LOCAL (v2) or UNKNOWN (v1): the proxy itself.
    source: tuple[str, int] | None
    #: Bytes the header took at the start of the stream.
    length: int


def starts_with_header(data: bytes) -> bool | None:
    """True/False once the first bytes tell; None while they could still be either."""
    for prefix in (V2_SIGNATURE, V1_PREFIX):
        n = min(len(data), len(prefix))
        if data[:n] == prefix[:n]:
            return True if len(data) >= len(prefix) else None
    return False


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed.

    Only call once ``starts_with_header(data)`` is True. Raises ProxyHeaderError.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2: unsupported version")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError("PROXY v2: unknown command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("PROXY v2: header too long")
    total = _V2_FIXED + length
    if len(data) < total:
        return None
    if command == _CMD_LOCAL:
        return ProxyHeader(2, None, total)
    family, proto = fam >> 4, fam & 0x0F
    if family in (_AF_UNSPEC, _AF_UNIX):
        # Spec: an address the receiver cannot use means "use the connection's own".
        return ProxyHeader(2, None, total)
    if proto != _PROTO_STREAM:
        raise ProxyHeaderError("PROXY v2: not a TCP (stream) connection")
    if family == _AF_INET:
        if length < 12:
            raise ProxyHeaderError("PROXY v2: IPv4 address block truncated")
        src = str(ipaddress.IPv4Address(data[16:20]))
        (port,) = struct.unpack_from("!H", data, 24)
    elif family == _AF_INET6:
        if length < 36:
            raise ProxyHeaderError("PROXY v2: IPv6 address block truncated")
        src = _ip6(data[16:32])
        (port,) = struct.unpack_from("!H", data, 48)
    else:
        raise ProxyHeaderError("PROXY v2: unknown address family")
    return ProxyHeader(2, (src, port), total)


def _ip6(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError("PROXY v1: no CRLF within 107 bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1: not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1: malformed line")
    _, proto, src, _dst, sport, _dport = parts
    try:
        addr = ipaddress.ip_address(src)
    except ValueError:
        raise ProxyHeaderError("PROXY v1: bad source address") from None
    if (proto == "TCP4") != (addr.version == 4):
        raise ProxyHeaderError("PROXY v1: address does not match the protocol")
    if not (sport.isdigit() and len(sport) <= 5 and int(sport) <= 65535):
        raise ProxyHeaderError("PROXY v1: bad source port")
    return ProxyHeader(1, (str(addr), int(sport)), end + 2)


@dataclass(frozen=True, slots=True)
class Decided:
    #: The address this connection stands for (throttle, logs, sessions).
    client: str
    #: The client's port (the proxy's when the header named no client).
    port: int
    #: Whether a PROXY header was read (the address came from the proxy).
    proxied: bool
    #: Stream bytes after the header: the start of the real protocol (TLS, HTTP).
    rest: bytes


class ProxyPreamble:
    """Reads the optional PROXY header at the start of one connection (see module doc)."""

    __slots__ = ("_buf", "_peer", "_port", "_required", "_trusted")

    def __init__(self, peer: str, port: int, *, trusted: bool, required: bool) -> None:
        self._peer = peer
        self._port = port
        self._trusted = trusted
        self._required = required
        self._buf = b""

    def feed(self, data: bytes) -> Decided | None:
        """None: more bytes needed. Raises ProxyHeaderError: refuse (close) the connection."""
        buf = self._buf + data
        self._buf = buf
        starts = starts_with_header(buf)
        if starts is None:
            return None
        if not starts:
            if self._trusted and self._required:
                raise ProxyHeaderError("trusted proxy sent no PROXY header (required)")
            return Decided(self._peer, self._port, False, buf)
        if not self._trusted:
            raise ProxyHeaderError("PROXY header from an address that is not a trusted proxy")
        header = parse_header(buf)
        if header is None:
            return None
        rest = buf[header.length :]
        if header.source is None:
            return Decided(self._peer, self._port, True, rest)
        return Decided(header.source[0], header.source[1], True, rest)


def v2_header(source: tuple[str, int] | None, destination: tuple[str, int]) -> bytes:
    """A v2 header (PROXY, or LOCAL when ``source`` is None): for tests and tools."""
    if source is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    fam = (_AF_INET if src.version == 4 else _AF_INET6) << 4 | _PROTO_STREAM
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block
