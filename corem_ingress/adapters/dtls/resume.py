"""DTLS 1.2 session resumption by session id (RFC 5246 7.3 abbreviated handshake), our side.

OpenSSL (inside cryptography's binding) has neither session-cache nor ticket-key
callbacks, so the sessions it issues cannot be shared by the nodes; it only puts an RFC
5246 session id in its ServerHello. We store the session under that id (Redis, sealed:
``store/dtls_sessions.py``) and answer a ClientHello that names it ourselves:

    client                                   server (this module)
    ClientHello (cookie, session id)  -->
                                      <--    ServerHello (same id), ChangeCipherSpec, Finished
    ChangeCipherSpec, Finished        -->

with the keys of the key block derived from the stored master secret and the two new
randoms (``cid.KeyBlock``), records protected by ``CidSession`` (with a Connection ID when
one is negotiated, plain epoch-1 records otherwise). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum

from corem_ingress.adapters.dtls import cid
from corem_ingress.adapters.dtls.cid_session import CidSession
from corem_ingress.adapters.dtls.records import (
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    FINISHED_VERIFY_DATA,
    HT_CLIENT_HELLO,
    HT_SERVER_HELLO,
)
from corem_ingress.adapters.dtls.records import HANDSHAKE_HEADER as _HS_HEADER
from corem_ingress.adapters.dtls.records import RECORD_HEADER as _HEADER
from corem_ingress.core.dtls_resumption import StoredSession

HT_FINISHED = 20
VERIFY_DATA = FINISHED_VERIFY_DATA

EXT_EXTENDED_MASTER_SECRET = 0x0017
EXT_RENEGOTIATION_INFO = 0xFF01
#: TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746): the client's renegotiation_info.
SCSV_RENEGOTIATION = 0x00FF

#: Our flight is retransmitted after 1 s, doubling (RFC 6347 4.2.4.1), this many times.
MAX_RETRANSMITS = 6


@dataclass(frozen=True, slots=True)
class Hello:
    """A whole (unfragmented) ClientHello, as the resumed handshake needs it."""

    record_seq: int
    message_seq: int
    random: bytes
    session_id: bytes
    cookie: bytes
    suites: tuple[int, ...]
    #: extension type -> extension_data, in the client's order.
    extensions: dict[int, bytes]
    #: The handshake message as it enters the handshake hash (DTLS header included).
    message: bytes


def parse_hello(data: bytes) -> Hello | None:
    """The ClientHello that opens ``data``; None if it is not one whole message in one
    record (a fragmented one is left to OpenSSL)."""
    if len(data) < _HEADER + _HS_HEADER or data[0] != CT_HANDSHAKE or data[3:5] != b"\0\0":
        return None
    rec_len = int.from_bytes(data[11:13], "big")
    frag = data[_HEADER : _HEADER + rec_len]
    if len(frag) < _HS_HEADER or frag[0] != HT_CLIENT_HELLO:
        return None
    length = int.from_bytes(frag[1:4], "big")
    if frag[6:9] != b"\0\0\0" or int.from_bytes(frag[9:12], "big") != length:
        return None
    message = frag[: _HS_HEADER + length]
    body = message[_HS_HEADER:]
    if len(body) != length:
        return None
    try:
        pos = 2
        random = body[pos : pos + 32]
        pos += 32
        session_id = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + body[pos]
        cookie = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + body[pos]
        slen = int.from_bytes(body[pos : pos + 2], "big")
        raw = body[pos + 2 : pos + 2 + slen]
        suites = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, slen - 1, 2))
        pos += 2 + slen
        pos += 1 + body[pos]  # compression methods
        extensions = _extensions(body[pos:])
    except IndexError:
        return None
    if extensions is None or len(random) != 32 or len(session_id) > 32:
        return None
    return Hello(
        record_seq=int.from_bytes(data[5:11], "big"),
        message_seq=int.from_bytes(frag[4:6], "big"),
        random=random,
        session_id=session_id,
        cookie=cookie,
        suites=suites,
        extensions=extensions,
        message=message,
    )


def _extensions(block: bytes) -> dict[int, bytes] | None:
    if not block:
        return {}
    total = int.from_bytes(block[:2], "big")
    data = block[2 : 2 + total]
    if len(data) != total:
        return None
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        etype = int.from_bytes(data[pos : pos + 2], "big")
        elen = int.from_bytes(data[pos + 2 : pos + 4], "big")
        out[etype] = data[pos + 4 : pos + 4 + elen]
        pos += 4 + elen
    return out if pos == len(data) else None


@dataclass(frozen=True, slots=True)
class IssuedHello:
    """What our (OpenSSL's) ServerHello of a full handshake said."""

    session_id: bytes
    suite: int
    extensions: frozenset[int]


def issued_hello(data: bytes) -> IssuedHello | None:
    """The ServerHello in ``data`` (our own output of a full handshake), if one is there."""
    pos = 0
    while pos + _HEADER <= len(data):
        end = pos + _HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
        frag = data[pos + _HEADER : end]
        epoch0 = data[pos] == CT_HANDSHAKE and data[pos + 3 : pos + 5] == b"\0\0"
        if epoch0 and len(frag) > _HS_HEADER and frag[0] == HT_SERVER_HELLO:
            return _issued(frag[_HS_HEADER:])
        pos = end
    return None


def _issued(body: bytes) -> IssuedHello | None:
    try:
        pos = 34
        session_id = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + body[pos]
        suite = int.from_bytes(body[pos : pos + 2], "big")
        extensions = _extensions(body[pos + 3 :])
    except IndexError:
        return None
    if extensions is None:
        return None
    return IssuedHello(session_id, suite, frozenset(extensions))


def handshake_message(mtype: int, message_seq: int, body: bytes) -> bytes:
    """A DTLS handshake message in one fragment (as sent, and as hashed: RFC 6347 4.2.6)."""
    n = len(body).to_bytes(3, "big")
    return bytes([mtype]) + n + message_seq.to_bytes(2, "big") + b"\0\0\0" + n + body


def server_hello(
    message_seq: int,
    random: bytes,
    session_id: bytes,
    suite: int,
    extensions: list[tuple[int, bytes]],
) -> bytes:
    """Our ServerHello: DTLS 1.2, no compression."""
    ext = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
    body = (
        cid.VERSION
        + random
        + bytes([len(session_id)])
        + session_id
        + suite.to_bytes(2, "big")
        + b"\0"
        + (len(ext).to_bytes(2, "big") + ext if ext else b"")
    )
    return handshake_message(HT_SERVER_HELLO, message_seq, body)


def verify_data(hash_name: str, master: bytes, label: bytes, transcript: bytes) -> bytes:
    """RFC 5246 7.4.9: PRF(master_secret, finished_label, Hash(handshake_messages))[0..11]."""
    digest = hashlib.new(hash_name, transcript).digest()
    return cid.prf(hash_name, master, label, digest, VERIFY_DATA)


def plain_record(ctype: int, seq: int, payload: bytes) -> bytes:
    """An epoch-0 record."""
    return (
        bytes([ctype])
        + cid.VERSION
        + b"\0\0"
        + seq.to_bytes(6, "big")
        + (len(payload).to_bytes(2, "big") + payload)
    )


class Refusal(Enum):
    """Why a ClientHello naming a stored session is not resumed."""

    #: Not resumable as asked: run a full handshake instead (RFC 5246 7.4.1.2, RFC 7627 5.3).
    FULL_HANDSHAKE = "full_handshake"
    #: RFC 7627 5.3: the session used the extended master secret, the new hello does not.
    ABORT = "abort"


def check_hello(hello: Hello, stored: StoredSession) -> Refusal | None:
    """Whether ``hello`` may resume ``stored``."""
    if stored.suite not in hello.suites or stored.suite not in cid.SUITES:
        return Refusal.FULL_HANDSHAKE
    offers_ems = EXT_EXTENDED_MASTER_SECRET in hello.extensions
    if stored.extended_master_secret and not offers_ems:
        return Refusal.ABORT
    if offers_ems and not stored.extended_master_secret:
        return Refusal.FULL_HANDSHAKE
    return None


class Outcome(Enum):
    WAITING = "waiting"
    DONE = "done"
    #: The client's Finished did not verify (or its record did not authenticate).
    FAILED = "failed"


@dataclass(eq=False)
class ResumedHandshake:
    """The server side of one abbreviated handshake: our flight, then the client's
    ChangeCipherSpec + Finished (possibly fragmented, retransmitted, reordered)."""

    hello: Hello
    stored: StoredSession
    server_random: bytes
    #: The record layer of the session (CIDs set by the caller when negotiated).
    session: CidSession
    #: Our CID in the ServerHello's ``connection_id`` (None: the client did not ask).
    cid_extension: bytes | None = None
    #: Our flight, as records (ServerHello, ChangeCipherSpec, Finished).
    flight: list[bytes] = field(default_factory=list)
    _client_verify: bytes = b""
    _fragments: dict[int, bytes] = field(default_factory=dict)
    retransmits: int = 0

    def __post_init__(self) -> None:
        hello, stored = self.hello, self.stored
        suite = cid.SUITES[stored.suite]
        self.session.set_keys(stored.suite, stored.master, hello.random, self.server_random)
        extensions: list[tuple[int, bytes]] = []
        if EXT_RENEGOTIATION_INFO in hello.extensions or SCSV_RENEGOTIATION in hello.suites:
            extensions.append((EXT_RENEGOTIATION_INFO, b"\0"))  # RFC 5746 3.6, empty
        if stored.extended_master_secret:
            extensions.append((EXT_EXTENDED_MASTER_SECRET, b""))
        if self.cid_extension is not None:
            extensions.append((cid.EXT_CONNECTION_ID, self.cid_extension))
        seq = hello.message_seq
        sh = server_hello(seq, self.server_random, hello.session_id, stored.suite, extensions)
        transcript = hello.message + sh
        ours = verify_data(suite.prf_hash, stored.master, b"server finished", transcript)
        finished = handshake_message(HT_FINISHED, seq + 1, ours)
        self._client_verify = verify_data(
            suite.prf_hash, stored.master, b"client finished", transcript + finished
        )
        self.flight = [
            plain_record(CT_HANDSHAKE, hello.record_seq, sh),
            plain_record(CT_CHANGE_CIPHER_SPEC, hello.record_seq + 1, b"\x01"),
            self.session.protect(CT_HANDSHAKE, finished),
        ]

    def receive(self, record: bytes) -> Outcome:
        """One record of the client after our flight (epoch 0 ones are ignored here)."""
        if record[3:5] != b"\0\x01":
            return Outcome.WAITING
        seq = int.from_bytes(record[5:11], "big")
        if not self.session.window.check(seq):
            return Outcome.WAITING  # a retransmission of a record already read
        result = self.session.unprotect(record)
        if result is None:
            # A Finished that does not authenticate: the client holds another master
            # secret (someone who saw the session id, not its keys).
            return Outcome.FAILED
        opened, _newer = result
        if opened.content_type != CT_HANDSHAKE:
            return Outcome.WAITING  # application data before its Finished: dropped
        message = self._reassemble(opened.payload)
        if message is None:
            return Outcome.WAITING
        good = hmac.compare_digest(message, self._client_verify)
        return Outcome.DONE if good else Outcome.FAILED

    def _reassemble(self, payload: bytes) -> bytes | None:
        """The client's Finished verify_data once all its fragments arrived."""
        pos = 0
        while pos + _HS_HEADER <= len(payload):
            h = payload[pos : pos + _HS_HEADER]
            flen = int.from_bytes(h[9:12], "big")
            frag = payload[pos + _HS_HEADER : pos + _HS_HEADER + flen]
            pos += _HS_HEADER + flen
            if h[0] != HT_FINISHED or int.from_bytes(h[1:4], "big") != VERIFY_DATA:
                return b""  # not a Finished: fails the comparison
            if len(self._fragments) < 16:
                self._fragments.setdefault(int.from_bytes(h[6:9], "big"), frag)
        data = bytearray()
        for offset in sorted(self._fragments):
            if offset > len(data):
                return None
            piece = self._fragments[offset]
            data[offset : offset + len(piece)] = piece
        return bytes(data[:VERIFY_DATA]) if len(data) >= VERIFY_DATA else None
