"""DTLS 1.2 record framing, pure functions: split, pack into datagrams, peek at handshakes.

Nothing here decrypts: we only look at the plaintext epoch-0 handshake messages
(ClientHello's cookie, the client's Certificate and PSK ClientKeyExchange) so the
server can check a cookie before keeping state and resolve a credential before
OpenSSL asks for it synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECORD_HEADER = 13
HANDSHAKE_HEADER = 12

CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23

HT_CLIENT_HELLO = 1
HT_CERTIFICATE = 11
HT_CLIENT_KEY_EXCHANGE = 16

#: Largest handshake message we reassemble while peeking (a cert chain fits easily).
MAX_PEEK_MESSAGE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    content_type: int
    epoch: int
    raw: bytes

    @property
    def fragment(self) -> bytes:
        return self.raw[RECORD_HEADER:]


def split_records(data: bytes) -> list[Record]:
    """Whole records in ``data``; a truncated tail is ignored (it cannot be a valid record)."""
    out: list[Record] = []
    pos = 0
    n = len(data)
    while pos + RECORD_HEADER <= n:
        length = int.from_bytes(data[pos + 11 : pos + 13], "big")
        end = pos + RECORD_HEADER + length
        if end > n:
            break
        epoch = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append(Record(data[pos], epoch, data[pos:end]))
        pos = end
    return out


def pack_datagrams(data: bytes, mtu: int) -> list[bytes]:
    """Group whole records into datagrams of at most ``mtu`` bytes (a bigger record goes alone)."""
    out: list[bytes] = []
    current = bytearray()
    for rec in split_records(data):
        if current and len(current) + len(rec.raw) > mtu:
            out.append(bytes(current))
            current = bytearray()
        current += rec.raw
    if current:
        out.append(bytes(current))
    return out


def client_hello_cookie(data: bytes) -> bytes | None:
    """The cookie of the ClientHello that opens ``data``; None if it does not open with one.

    An empty cookie (first ClientHello) is returned as ``b""``.
    """
    if len(data) < RECORD_HEADER + HANDSHAKE_HEADER + 35:
        return None
    if data[0] != CT_HANDSHAKE or data[3:5] != b"\x00\x00":
        return None
    hs = data[RECORD_HEADER:]
    if hs[0] != HT_CLIENT_HELLO or hs[6:9] != b"\x00\x00\x00":  # first fragment only
        return None
    body = hs[HANDSHAKE_HEADER:]
    pos = 2 + 32  # client_version, random
    if len(body) < pos + 1:
        return None
    pos += 1 + body[pos]  # session_id
    if len(body) < pos + 1:
        return None
    clen = body[pos]
    cookie = body[pos + 1 : pos + 1 + clen]
    return cookie if len(cookie) == clen else None


def is_client_hello(data: bytes) -> bool:
    return client_hello_cookie(data) is not None


@dataclass
class _Assembly:
    length: int
    parts: dict[int, bytes] = field(default_factory=dict)

    def add(self, offset: int, frag: bytes) -> bytes | None:
        self.parts[offset] = frag
        buf = bytearray(self.length)
        covered = 0
        for off in sorted(self.parts):
            piece = self.parts[off]
            if off > covered:
                return None
            buf[off : off + len(piece)] = piece
            covered = max(covered, off + len(piece))
        return bytes(buf) if covered >= self.length else None


@dataclass
class HandshakePeek:
    """Reassembles the client's plaintext Certificate and ClientKeyExchange (epoch 0)."""

    certificate_der: bytes | None = None
    psk_identity: bytes | None = None
    _assemblies: dict[int, _Assembly] = field(default_factory=dict)

    def feed(self, data: bytes) -> None:
        for rec in split_records(data):
            if rec.content_type != CT_HANDSHAKE or rec.epoch != 0:
                continue
            frag = rec.fragment
            pos = 0
            while pos + HANDSHAKE_HEADER <= len(frag):
                h = frag[pos : pos + HANDSHAKE_HEADER]
                mtype = h[0]
                length = int.from_bytes(h[1:4], "big")
                offset = int.from_bytes(h[6:9], "big")
                flen = int.from_bytes(h[9:12], "big")
                body = frag[pos + HANDSHAKE_HEADER : pos + HANDSHAKE_HEADER + flen]
                pos += HANDSHAKE_HEADER + flen
                if mtype not in (HT_CERTIFICATE, HT_CLIENT_KEY_EXCHANGE):
                    continue
                if length > MAX_PEEK_MESSAGE or offset + len(body) > length:
                    continue
                asm = self._assemblies.setdefault(mtype, _Assembly(length))
                if asm.length != length:
                    continue
                whole = asm.add(offset, body)
                if whole is not None:
                    self._complete(mtype, whole)

    def _complete(self, mtype: int, body: bytes) -> None:
        if mtype == HT_CERTIFICATE and self.certificate_der is None:
            if len(body) >= 6:
                first = int.from_bytes(body[3:6], "big")
                der = body[6 : 6 + first]
                if first and len(der) == first:
                    self.certificate_der = der
        elif mtype == HT_CLIENT_KEY_EXCHANGE and self.psk_identity is None and len(body) >= 2:
            # PSK and ECDHE-PSK: opaque psk_identity<0..2^16-1> first.
            ilen = int.from_bytes(body[0:2], "big")
            ident = body[2 : 2 + ilen]
            if len(ident) == ilen:
                self.psk_identity = ident


HT_SERVER_HELLO = 2
#: PSK-AES128-CCM8, PSK-AES128-CCM, PSK-AES128-GCM-SHA256, PSK-AES256-GCM-SHA384.
PSK_SUITES = frozenset({0xC0A8, 0xC0A4, 0x00A8, 0x00A9})


def server_hello_suite(data: bytes) -> int | None:
    """The cipher suite chosen in a ServerHello in ``data`` (our own output), if any."""
    for rec in split_records(data):
        frag = rec.fragment
        if rec.content_type != CT_HANDSHAKE or rec.epoch != 0 or len(frag) < HANDSHAKE_HEADER:
            continue
        if frag[0] != HT_SERVER_HELLO or frag[6:9] != b"\x00\x00\x00":
            continue
        body = frag[HANDSHAKE_HEADER:]
        pos = 2 + 32
        if len(body) < pos + 1:
            return None
        pos += 1 + body[pos]
        if len(body) < pos + 2:
            return None
        return int.from_bytes(body[pos : pos + 2], "big")
    return None


def alert_record(description: int, *, epoch: int = 0, seq: int = 0xFFFF_FFF0) -> bytes:
    """A plaintext fatal alert record (for a handshake OpenSSL abandons silently)."""
    header = bytes([CT_ALERT, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
    return header + (2).to_bytes(2, "big") + bytes([2, description])
