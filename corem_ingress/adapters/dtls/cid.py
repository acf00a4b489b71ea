"""DTLS 1.2 Connection ID (RFC 9146) record layer, pure functions and small objects.

OpenSSL's record layer knows nothing of the ``tls12_cid`` content type, so once a CID
is negotiated we protect and unprotect the epoch-1 records ourselves with the keys of the
session: the key block is derived from the master secret and the randoms (RFC 5246 6.3),
the AEAD nonce is the implicit salt and the 8-byte explicit nonce (we write the epoch
and sequence number, as mbedTLS does and OpenSSL does for CCM), and the additional data
is RFC 9146 5's for a CID record and RFC 6347's for a plain one. Only the AEAD suites the
server offers exist here (CCM_8, CCM, GCM; PSK and ECDHE-ECDSA): no MAC key, 4-byte salt.

Nothing here touches a socket or OpenSSL: ``server.py`` feeds bytes in and out.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

#: RFC 9146 content type of a record that carries a CID.
CT_TLS12_CID = 25
#: RFC 9146 extension type of ``connection_id``.
EXT_CONNECTION_ID = 54
#: DTLS 1.2 on the wire.
VERSION = b"\xfe\xfd"
#: type, version, epoch, sequence number (the CID then the length follow in a CID record).
_HEADER_BEFORE_CID = 11
#: The 8 bytes of 0xff that open RFC 9146 5's additional data.
_SEQ_NUM_PLACEHOLDER = b"\xff" * 8
_EXPLICIT_NONCE = 8
_SALT = 4
#: Largest plaintext of one record (RFC 6347: 2^14).
MAX_PLAINTEXT = 16_384


class BadRecord(Exception):
    """A record that does not parse or whose AEAD tag does not verify (dropped silently,
    as RFC 6347 4.1.2.7 asks for invalid records)."""


@dataclass(frozen=True, slots=True)
class AeadSuite:
    """What a suite needs of the record layer."""

    key_len: int
    tag_len: int
    gcm: bool
    #: The PRF's hash (SHA-384 for the AES-256-GCM suites).
    prf_hash: str


#: Every suite the server offers (records.PSK_SUITES and records.ECDHE_ECDSA_SUITES).
SUITES: dict[int, AeadSuite] = {
    0x00A8: AeadSuite(16, 16, True, "sha256"),  # PSK-AES128-GCM-SHA256
    0x00A9: AeadSuite(32, 16, True, "sha384"),  # PSK-AES256-GCM-SHA384
    0xC0A4: AeadSuite(16, 16, False, "sha256"),  # PSK-AES128-CCM
    0xC0A8: AeadSuite(16, 8, False, "sha256"),  # PSK-AES128-CCM8
    0xC02B: AeadSuite(16, 16, True, "sha256"),  # ECDHE-ECDSA-AES128-GCM-SHA256
    0xC02C: AeadSuite(32, 16, True, "sha384"),  # ECDHE-ECDSA-AES256-GCM-SHA384
    0xC0AC: AeadSuite(16, 16, False, "sha256"),  # ECDHE-ECDSA-AES128-CCM
    0xC0AE: AeadSuite(16, 8, False, "sha256"),  # ECDHE-ECDSA-AES128-CCM8
}


#: OpenSSL's names of those suites -> their ids.
SUITE_IDS: dict[str, int] = {
    "PSK-AES128-GCM-SHA256": 0x00A8,
    "PSK-AES256-GCM-SHA384": 0x00A9,
    "PSK-AES128-CCM": 0xC0A4,
    "PSK-AES128-CCM8": 0xC0A8,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-ECDSA-AES128-CCM": 0xC0AC,
    "ECDHE-ECDSA-AES128-CCM8": 0xC0AE,
}


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF (RFC 5246 5): P_hash(secret, label + seed)."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return bytes(out[:length])


@dataclass(frozen=True, slots=True)
class KeyBlock:
    client_key: bytes
    server_key: bytes
    client_salt: bytes
    server_salt: bytes

    @classmethod
    def derive(
        cls, suite: AeadSuite, master: bytes, client_random: bytes, server_random: bytes
    ) -> KeyBlock:
        """RFC 5246 6.3: key_block = PRF(master, "key expansion", server_random +
        client_random), cut into write keys then write IVs (no MAC keys for AEADs)."""
        n = suite.key_len
        block = prf(
            suite.prf_hash, master, b"key expansion", server_random + client_random, 2 * n + 8
        )
        return cls(block[:n], block[n : 2 * n], block[2 * n : 2 * n + 4], block[2 * n + 4 :])


def _aead(suite: AeadSuite, key: bytes) -> AESGCM | AESCCM:
    return AESGCM(key) if suite.gcm else AESCCM(key, tag_length=suite.tag_len)


def _plain_aad(ctype: int, epoch_seq: bytes, length: int) -> bytes:
    """RFC 6347 4.1.2.1 / RFC 5246 6.2.3.3: epoch+seq, type, version, plaintext length."""
    return epoch_seq + bytes([ctype]) + VERSION + length.to_bytes(2, "big")


def _cid_aad(epoch_seq: bytes, cid: bytes, length: int) -> bytes:
    """RFC 9146 5 (AEAD ciphers): seq_num_placeholder, tls12_cid, cid_length, tls12_cid,
    version, epoch, sequence_number, cid, length_of_DTLSInnerPlaintext."""
    return (
        _SEQ_NUM_PLACEHOLDER
        + bytes([CT_TLS12_CID, len(cid), CT_TLS12_CID])
        + VERSION
        + epoch_seq
        + cid
        + length.to_bytes(2, "big")
    )


class OpenedRecord(NamedTuple):
    """An unprotected record (a tuple: cheaper to make than a frozen dataclass, once per
    record)."""

    content_type: int
    epoch: int
    seq: int
    payload: bytes


class RecordCipher:
    """One direction of one epoch's protection (a write key and its salt)."""

    __slots__ = ("_aead", "_salt", "suite")

    def __init__(self, suite: AeadSuite, key: bytes, salt: bytes) -> None:
        self.suite = suite
        self._aead = _aead(suite, key)
        self._salt = salt

    @property
    def overhead(self) -> int:
        """Explicit nonce and tag: what protection adds to a record's body."""
        return _EXPLICIT_NONCE + self.suite.tag_len

    def seal(
        self,
        ctype: int,
        epoch: int,
        seq: int,
        payload: bytes,
        cid: bytes | None,
        explicit_nonce: bytes | None = None,
    ) -> bytes:
        """One record. ``cid`` None: an RFC 6347 record; else a ``tls12_cid`` record with
        that CID. The explicit nonce is the epoch and sequence number (unique per key, as
        RFC 5288/6655 ask) unless given: OpenSSL's GCM starts its own at a random value,
        and a record re-protected for OpenSSL keeps the one it came with."""
        epoch_seq = epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
        explicit = epoch_seq if explicit_nonce is None else explicit_nonce
        nonce = self._salt + explicit
        if cid is None:
            body = explicit + self._aead.encrypt(
                nonce, payload, _plain_aad(ctype, epoch_seq, len(payload))
            )
            return bytes([ctype]) + VERSION + epoch_seq + len(body).to_bytes(2, "big") + body
        inner = payload + bytes([ctype])  # DTLSInnerPlaintext, no padding
        body = explicit + self._aead.encrypt(nonce, inner, _cid_aad(epoch_seq, cid, len(inner)))
        return (
            bytes([CT_TLS12_CID]) + VERSION + epoch_seq + cid + len(body).to_bytes(2, "big") + body
        )

    def open(self, record: bytes, cid_len: int) -> OpenedRecord:
        """Unprotect one whole record (``split`` gives them). ``cid_len`` is the length of
        the CID we issued (used only for a ``tls12_cid`` record)."""
        ctype = record[0]
        epoch_seq = record[3:11]
        if ctype == CT_TLS12_CID:
            cid = record[11 : 11 + cid_len]
            body = record[13 + cid_len :]
        else:
            cid = None
            body = record[13:]
        if len(body) < self.overhead:
            raise BadRecord("shorter than the AEAD overhead")
        nonce = self._salt + body[:_EXPLICIT_NONCE]
        sealed = body[_EXPLICIT_NONCE:]
        plain_len = len(sealed) - self.suite.tag_len
        if cid is None:
            aad = _plain_aad(ctype, epoch_seq, plain_len)
        else:
            aad = _cid_aad(epoch_seq, cid, plain_len)
        try:
            plain = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag as exc:
            raise BadRecord("bad record MAC") from exc
        if cid is not None:
            # DTLSInnerPlaintext: content, real type, zeros (RFC 9146 4).
            stripped = plain.rstrip(b"\x00")
            if not stripped:
                raise BadRecord("inner plaintext without a content type")
            ctype, plain = stripped[-1], stripped[:-1]
        epoch = int.from_bytes(epoch_seq[:2], "big")
        return OpenedRecord(ctype, epoch, int.from_bytes(epoch_seq[2:], "big"), plain)


def split(data: bytes, cid_len: int) -> list[bytes]:
    """Whole records of a datagram, ``tls12_cid`` records (with a CID of ``cid_len``
    bytes) among plain ones; a truncated tail is ignored."""
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos + 13 <= n:
        length_at = pos + _HEADER_BEFORE_CID + (cid_len if data[pos] == CT_TLS12_CID else 0)
        if length_at + 2 > n:
            break
        end = length_at + 2 + int.from_bytes(data[length_at : length_at + 2], "big")
        if end > n:
            break
        out.append(data[pos:end])
        pos = end
    return out


def record_cid(record: bytes, cid_len: int) -> bytes | None:
    """The CID of a ``tls12_cid`` record (of the length we issue), None for another."""
    if len(record) < _HEADER_BEFORE_CID + cid_len + 2 or record[0] != CT_TLS12_CID:
        return None
    return record[_HEADER_BEFORE_CID : _HEADER_BEFORE_CID + cid_len]


def record_epoch_seq(record: bytes) -> tuple[int, int]:
    return int.from_bytes(record[3:5], "big"), int.from_bytes(record[5:11], "big")


@dataclass(slots=True)
class ReplayWindow:
    """RFC 6347 4.1.2.6: a 64-record sliding window over the received sequence numbers
    (one epoch). ``check`` before authenticating, ``accept`` after."""

    size: int = 64
    top: int = -1
    _bits: int = field(default=0, repr=False)

    def check(self, seq: int) -> bool:
        """False for a duplicate or a record older than the window."""
        if seq > self.top:
            return True
        offset = self.top - seq
        return offset < self.size and not (self._bits >> offset) & 1

    def accept(self, seq: int) -> bool:
        """Mark ``seq`` received; True if it is newer than every record before it."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self.top = seq
            return True
        self._bits |= 1 << (self.top - seq)
        return False


def cid_extension(cid: bytes) -> bytes:
    """``connection_id`` extension_data: opaque cid<0..2^8-1>."""
    return bytes([len(cid)]) + cid


def parse_cid_extension(data: bytes) -> bytes | None:
    """The CID in a ``connection_id`` extension_data; None if malformed."""
    if not data or data[0] != len(data) - 1:
        return None
    return bytes(data[1:])


def node_cid(node_tag: bytes, length: int, random: bytes) -> bytes:
    """A CID we issue: the node's tag first (so any node knows whose it is), then random
    bytes; ``length`` 0 asks for no CID."""
    if length == 0:
        return b""
    return (node_tag + random)[:length]


def node_tag(node_id: str, size: int = 2) -> bytes:
    """The first bytes of every CID a node issues: a digest of its id."""
    return hashlib.sha256(node_id.encode()).digest()[:size]
