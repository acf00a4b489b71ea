"""Pre-shared keys: validation, generation and sealing at rest.

A PSK must be usable in a DTLS handshake, so it cannot be hashed: it is sealed
with AES-256-GCM under a key-encryption key (KEK) that never reaches Redis. The
KEK id is stored beside the ciphertext so KEKs can be rotated; tenant and PSK
identity are bound in as associated data, so a sealed PSK copied to another
identity or tenant fails to open.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corem_ingress.core.errors import FailedPrecondition, InvalidArgument

#: The platform's rule. Operators may lower it to 16 (``credentials.psk_min_bytes``) for fleets
#: on stock tinydtls, which cannot use PSKs longer than 16 bytes (DTLS_PSK_MAX_KEY_LEN).
MIN_PSK_BYTES = 32
LOWEST_MIN_PSK_BYTES = 16
MAX_PSK_BYTES = 64
GENERATED_PSK_BYTES = 32
MAX_IDENTITY_BYTES = 128
KEK_BYTES = 32
_NONCE_BYTES = 12
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def check_identity(identity: str) -> str:
    if not isinstance(identity, str) or not identity:
        raise InvalidArgument("PSK identity must not be empty")
    if len(identity.encode("utf-8")) > MAX_IDENTITY_BYTES:
        raise InvalidArgument(f"PSK identity must be at most {MAX_IDENTITY_BYTES} bytes of UTF-8")
    if not identity.isprintable() or identity != identity.strip():
        raise InvalidArgument("PSK identity must be printable, without surrounding whitespace")
    return identity


def identity_prefix(tenant_id: str) -> str:
    """Every PSK identity of a tenant starts with this (tenant ids hold no ':')."""
    return f"{tenant_id}:"


def check_tenant_identity(tenant_id: str, identity: str) -> str:
    """An identity a tenant may assign: well formed and in the tenant's own namespace.

    PSK identities are global (the handshake maps identity -> tenant), so a tenant that
    could pick any identity would learn, from "already in use", another tenant's. In its
    own namespace a conflict only ever names its own devices.
    """
    check_identity(identity)
    prefix = identity_prefix(tenant_id)
    if not identity.startswith(prefix) or len(identity) == len(prefix):
        raise InvalidArgument(f"PSK identity must start with the tenant's prefix '{prefix}'")
    return identity


def check_psk(psk: bytes, *, min_bytes: int = MIN_PSK_BYTES) -> bytes:
    if not min_bytes <= len(psk) <= MAX_PSK_BYTES:
        raise InvalidArgument(f"PSK must be {min_bytes} to {MAX_PSK_BYTES} bytes")
    return psk


def check_entropy(psk: bytes) -> bytes:
    """Refuse an operator-assigned PSK that is trivially guessable.

    A random key of 16+ bytes never looks like these, so nothing real is refused: one byte
    repeated, a short block repeated (period up to half the length: ``deadbeef`` x 8), a
    constant step (00 01 02 ...), or fewer than a quarter of its bytes distinct. The message
    never shows the key.
    """
    n = len(psk)
    repeated = any(psk == (psk[:period] * (n // period + 1))[:n] for period in range(1, n // 2 + 1))
    steps = {(psk[i + 1] - psk[i]) % 256 for i in range(n - 1)}
    if repeated or len(steps) <= 1 or len(set(psk)) < max(4, n // 4):
        raise InvalidArgument(
            "PSK has trivially low entropy (repeated or sequential bytes): assign a random key, "
            "or leave it out to have one generated"
        )
    return psk


def parse_psk_hex(text: str) -> bytes:
    """An operator-assigned PSK: hex text -> bytes within the absolute bounds, not trivially
    guessable (``check_entropy``); the registry applies the configured minimum length."""
    try:
        psk = bytes.fromhex(text)
    except ValueError:
        raise InvalidArgument("PSK must be given as hexadecimal") from None
    return check_entropy(check_psk(psk, min_bytes=LOWEST_MIN_PSK_BYTES))


def generate_psk(length: int = GENERATED_PSK_BYTES) -> bytes:
    return secrets.token_bytes(length)


def generate_identity(tenant_id: str, hardware_id: str) -> str:
    # Random suffix: identities travel in clear in the DTLS handshake and must not be guessable.
    return check_identity(f"{identity_prefix(tenant_id)}{hardware_id}:{secrets.token_hex(4)}")


def new_psk_credential_id() -> str:
    return "psk_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class SealedPsk:
    kid: str
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "kid": self.kid,
            "n": base64.b64encode(self.nonce).decode(),
            "ct": base64.b64encode(self.ciphertext).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SealedPsk:
        try:
            return cls(
                kid=str(data["kid"]),
                nonce=base64.b64decode(str(data["n"]), validate=True),
                ciphertext=base64.b64decode(str(data["ct"]), validate=True),
            )
        except (KeyError, binascii.Error, ValueError):
            raise FailedPrecondition("stored PSK record is corrupt") from None


def _aad(tenant_id: str, identity: str) -> bytes:
    return b"corem-psk-v1\x00" + tenant_id.encode() + b"\x00" + identity.encode()


class KeyRing:
    """KEKs by id; new seals use the active one, opening uses whichever id is stored."""

    def __init__(self, keys: dict[str, bytes], active_kid: str) -> None:
        if not keys:
            raise InvalidArgument("no PSK key-encryption key configured")
        for kid, key in keys.items():
            if not _KID_RE.fullmatch(kid):
                raise InvalidArgument("KEK id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
            if len(key) != KEK_BYTES:
                raise InvalidArgument(f"KEK {kid!r} must be {KEK_BYTES} bytes")
        if active_kid not in keys:
            raise InvalidArgument(f"active KEK id {active_kid!r} is not among the configured keys")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active_kid = active_kid

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse ``kid:base64key`` entries, one per line or comma-separated; the first is active.

        Errors name the entry's position, never its content.
        """
        keys: dict[str, bytes] = {}
        order: list[str] = []
        entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
        entries = [e for e in entries if e and not e.startswith("#")]
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            if not sep:
                raise InvalidArgument(f"KEK entry {position}: expected 'key_id:base64key'")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"KEK entry {position}: key is not valid base64") from None
            kid = kid.strip()
            if kid in keys:
                raise InvalidArgument(f"KEK entry {position}: duplicate key id")
            keys[kid] = key
            order.append(kid)
        if not order:
            raise InvalidArgument("no PSK key-encryption key configured")
        return cls(keys, order[0])

    def seal(self, tenant_id: str, identity: str, psk: bytes) -> SealedPsk:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ct = self._keys[self.active_kid].encrypt(nonce, psk, _aad(tenant_id, identity))
        return SealedPsk(self.active_kid, nonce, ct)

    def open(self, tenant_id: str, identity: str, sealed: SealedPsk) -> bytes:
        aead = self._keys.get(sealed.kid)
        if aead is None:
            raise FailedPrecondition("PSK sealed under a key-encryption key that is not configured")
        try:
            return aead.decrypt(sealed.nonce, sealed.ciphertext, _aad(tenant_id, identity))
        except InvalidTag:
            raise FailedPrecondition("sealed PSK failed authentication") from None


def generate_kek_line(kid: str) -> str:
    """A fresh ``kid:base64`` KEK entry (for operators and the dev setup)."""
    if not _KID_RE.fullmatch(kid):
        raise InvalidArgument("KEK id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEK_BYTES)).decode()}"
