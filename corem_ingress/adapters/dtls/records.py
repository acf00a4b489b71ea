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
HT_CERTIFICATE_VERIFY = 15
HT_CLIENT_KEY_EXCHANGE = 16
#: The client's second flight at epoch 0 (Certificate and CertificateVerify only when the
#: server asked for a certificate).
_FLIGHT_MESSAGES = (HT_CERTIFICATE, HT_CLIENT_KEY_EXCHANGE, HT_CERTIFICATE_VERIFY)
#: Finished: 12-byte handshake header + 12 bytes of verify_data (TLS 1.2 PRF).
FINISHED_VERIFY_DATA = 12

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

    @property
    def seq(self) -> int:
        """The record sequence number (48 bits, per epoch)."""
        return int.from_bytes(self.raw[5:11], "big")


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
    return pack_records([rec.raw for rec in split_records(data)], mtu)


def pack_records(records: list[bytes], mtu: int) -> list[bytes]:
    """``pack_datagrams`` for records already split (``tls12_cid`` ones among them)."""
    out: list[bytes] = []
    current = bytearray()
    for raw in records:
        if current and len(current) + len(raw) > mtu:
            out.append(bytes(current))
            current = bytearray()
        current += raw
    if current:
        out.append(bytes(current))
    return out


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the server needs of a ClientHello before it keeps any state."""

    #: ``b""`` in a first ClientHello (no cookie yet).
    cookie: bytes
    #: The client's random: a new one means a new connection (RFC 6347 4.2.8).
    random: bytes
    #: Offered cipher suites (empty if the list was cut off: a fragmented ClientHello).
    suites: tuple[int, ...]
    #: The session the client asks to resume (``b""``: none).
    session_id: bytes = b""


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello that opens ``data`` (epoch 0, first fragment); None if none does."""
    if len(data) < RECORD_HEADER + HANDSHAKE_HEADER + 35:
        return None
    if data[0] != CT_HANDSHAKE or data[3:5] != b"\x00\x00":
        return None
    hs = data[RECORD_HEADER:]
    if hs[0] != HT_CLIENT_HELLO or hs[6:9] != b"\x00\x00\x00":  # first fragment only
        return None
    body = hs[HANDSHAKE_HEADER:]
    random = body[2:34]
    pos = 2 + 32  # client_version, random
    if len(body) < pos + 1:
        return None
    session_id = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    if len(body) < pos + 1:
        return None
    clen = body[pos]
    cookie = body[pos + 1 : pos + 1 + clen]
    if len(cookie) != clen:
        return None
    pos += 1 + clen
    suites: tuple[int, ...] = ()
    if len(body) >= pos + 2:
        slen = int.from_bytes(body[pos : pos + 2], "big")
        raw = body[pos + 2 : pos + 2 + slen]
        if len(raw) == slen:
            suites = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, slen - 1, 2))
    return ClientHello(cookie, random, suites, session_id)


def client_hello_cookie(data: bytes) -> bytes | None:
    """The cookie of the ClientHello that opens ``data``; None if it does not open with one.

    An empty cookie (first ClientHello) is returned as ``b""``.
    """
    hello = parse_client_hello(data)
    return None if hello is None else hello.cookie


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
    """The client's second flight, as far as a server without its keys can see it.

    Epoch 0 is plaintext: the Certificate and ClientKeyExchange are reassembled (so the
    credential can be resolved before OpenSSL asks for it synchronously) and we note which
    flight messages are complete. Then the ChangeCipherSpec, and after it the encrypted
    Finished: of its epoch-1 records only the lengths and sequence numbers are seen, each
    sequence number counted once (retransmissions, reordering).
    """

    certificate_der: bytes | None = None
    psk_identity: bytes | None = None
    #: Flight messages (handshake types) fully received.
    complete: set[int] = field(default_factory=set)
    change_cipher_spec: bool = False
    #: Epoch-1 handshake records: sequence number -> record body length.
    _encrypted: dict[int, int] = field(default_factory=dict)
    _assemblies: dict[int, _Assembly] = field(default_factory=dict)

    def feed(self, data: bytes) -> None:
        for rec in split_records(data):
            if rec.epoch == 0 and rec.content_type == CT_CHANGE_CIPHER_SPEC:
                # OpenSSL discards a ChangeCipherSpec that comes before the messages it
                # follows: such a one does not count (the client will send it again).
                if self._messages_complete():
                    self.change_cipher_spec = True
            elif rec.epoch == 1 and rec.content_type == CT_HANDSHAKE:
                if len(self._encrypted) < 64:  # a Finished is one record or a few fragments
                    self._encrypted.setdefault(rec.seq, len(rec.fragment))
            elif rec.epoch == 0 and rec.content_type == CT_HANDSHAKE:
                self._feed_handshake(rec.fragment)

    def _feed_handshake(self, frag: bytes) -> None:
        pos = 0
        while pos + HANDSHAKE_HEADER <= len(frag):
            h = frag[pos : pos + HANDSHAKE_HEADER]
            mtype = h[0]
            length = int.from_bytes(h[1:4], "big")
            offset = int.from_bytes(h[6:9], "big")
            flen = int.from_bytes(h[9:12], "big")
            body = frag[pos + HANDSHAKE_HEADER : pos + HANDSHAKE_HEADER + flen]
            pos += HANDSHAKE_HEADER + flen
            if mtype not in _FLIGHT_MESSAGES or mtype in self.complete:
                continue
            if length > MAX_PEEK_MESSAGE or offset + len(body) > length:
                continue
            asm = self._assemblies.setdefault(mtype, _Assembly(length))
            if asm.length != length:
                continue
            whole = asm.add(offset, body)
            if whole is not None:
                self.complete.add(mtype)
                del self._assemblies[mtype]
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

    def _messages_complete(self) -> bool:
        if HT_CLIENT_KEY_EXCHANGE not in self.complete or self._assemblies:
            return False
        return self.certificate_der is None or HT_CERTIFICATE_VERIFY in self.complete

    @property
    def last_encrypted_seq(self) -> int:
        """The highest sequence number of the client's epoch-1 handshake records (-1: none)."""
        return max(self._encrypted, default=-1)

    @property
    def finished_records(self) -> int:
        """Epoch-1 handshake records seen: more than one is a fragmented Finished (or a
        retransmitted one)."""
        return len(self._encrypted)

    def flight_complete(self, record_overhead: int) -> bool:
        """The whole flight is here: every message of it complete (CertificateVerify too
        when a certificate was sent), the ChangeCipherSpec, and epoch-1 records that carry
        at least the Finished's header and verify_data. ``record_overhead``: what the
        suite's AEAD adds to each record (explicit nonce + tag, ``aead_overhead``)."""
        if not (self._messages_complete() and self.change_cipher_spec):
            return False
        verify_data = sum(
            max(0, n - record_overhead - HANDSHAKE_HEADER) for n in self._encrypted.values()
        )
        return verify_data >= FINISHED_VERIFY_DATA


HT_SERVER_HELLO = 2
#: PSK-AES128-CCM8, PSK-AES128-CCM, PSK-AES128-GCM-SHA256, PSK-AES256-GCM-SHA384.
PSK_SUITES = frozenset({0xC0A8, 0xC0A4, 0x00A8, 0x00A9})
#: ECDHE-ECDSA-AES128-GCM-SHA256, -AES256-GCM-SHA384, -AES128-CCM8, -AES128-CCM.
ECDHE_ECDSA_SUITES = frozenset({0xC02B, 0xC02C, 0xC0AE, 0xC0AC})
_CCM8_SUITES = frozenset({0xC0A8, 0xC0AE})


def aead_overhead(suite: int | None) -> int | None:
    """Bytes a record of ``suite`` adds to its plaintext: the 8-byte explicit nonce and the
    tag (8 bytes for CCM8, 16 for GCM and CCM); None for a suite we do not offer."""
    if suite in _CCM8_SUITES:
        return 16
    if suite in PSK_SUITES or suite in ECDHE_ECDSA_SUITES:
        return 24
    return None


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


#: Alert descriptions (RFC 5246 7.2, RFC 4279), for what the logs say.
_ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    90: "user_canceled",
    100: "no_renegotiation",
    110: "unsupported_extension",
    115: "unknown_psk_identity",
}


def alert_name(description: int) -> str:
    """``internal_error (80)``: name and code of an alert description."""
    return f"{_ALERT_NAMES.get(description, 'alert')} ({description})"


def fatal_alert(data: bytes) -> int | None:
    """The description of a plaintext (epoch 0) fatal alert in ``data``, if there is one."""
    for rec in split_records(data):
        frag = rec.fragment
        if rec.content_type == CT_ALERT and rec.epoch == 0 and len(frag) == 2 and frag[0] == 2:
            return frag[1]
    return None


def with_alert_description(data: bytes, description: int) -> bytes:
    """``data`` with the description of each plaintext (epoch 0) alert record replaced:
    the server's policy, not OpenSSL's generic choice, says why a handshake was refused."""
    out = bytearray()
    for rec in split_records(data):
        raw = rec.raw
        if rec.content_type == CT_ALERT and rec.epoch == 0 and len(rec.fragment) == 2:
            raw = raw[:-1] + bytes([description])
        out += raw
    return bytes(out)


def alert_record(description: int, *, epoch: int = 0, seq: int = 0xFFFF_FFF0) -> bytes:
    """A plaintext fatal alert record (for a handshake OpenSSL abandons silently)."""
    header = bytes([CT_ALERT, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
    return header + (2).to_bytes(2, "big") + bytes([2, description])
