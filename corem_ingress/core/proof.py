"""Proof of possession: the caller holds the private key of the certificate it registers.

Certificates are public, so registering one proves nothing by itself. Where the broker
needs more (a self-signed device certificate, a CA added through the admin API, a CA
that asks its devices for it), the caller proves possession of the certificate's key
over a server-issued challenge:

* a challenge is ``corem-pop-v1:<tenant>:<token>``, issued to one tenant, usable once,
  expiring (the store keeps it; ``store/registry/proofs.py``);
* the proof is either a signature over the challenge's UTF-8 bytes (ECDSA with SHA-256,
  RSA PKCS#1 v1.5 with SHA-256, or Ed25519), base64, or a PKCS#10 CSR made with the key
  whose ``challengePassword`` attribute is the challenge.

Pure: the challenge's storage and single use are the registry's job.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import AttributeOID

from corem_ingress.core.errors import InvalidArgument

CHALLENGE_PREFIX = "corem-pop-v1"
#: How long a challenge can be used (seconds).
CHALLENGE_TTL_S = 300
MAX_SIGNATURE_BYTES = 1024
MAX_CSR_BYTES = 16 * 1024
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_challenge(tenant_id: str) -> tuple[str, str]:
    """(token, challenge text). The token names the stored challenge."""
    token = secrets.token_urlsafe(24)  # 32 characters, 192 random bits
    return token, f"{CHALLENGE_PREFIX}:{tenant_id}:{token}"


def challenge_token(challenge: str, tenant_id: str) -> str:
    """The token of a challenge issued to ``tenant_id``; InvalidArgument otherwise.

    Another tenant's challenge is refused here, before the store is asked, so it can
    neither be used nor used up by the wrong tenant.
    """
    prefix, sep, rest = challenge.partition(":")
    tenant, sep2, token = rest.partition(":")
    if prefix != CHALLENGE_PREFIX or not (sep and sep2) or tenant != tenant_id:
        raise InvalidArgument("challenge is not valid for this tenant")
    if not _TOKEN_RE.fullmatch(token):
        raise InvalidArgument("challenge is not valid for this tenant")
    return token


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof of possession as received: the challenge it answers, and its evidence."""

    challenge: str
    signature: bytes | None = None
    csr: x509.CertificateSigningRequest | None = None

    @classmethod
    def from_signature(cls, challenge: str, signature_b64: str) -> Proof:
        try:
            signature = base64.b64decode(signature_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument("proof signature must be base64") from None
        if not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise InvalidArgument(f"proof signature must be 1-{MAX_SIGNATURE_BYTES} bytes")
        return cls(challenge, signature=signature)

    @classmethod
    def from_csr(cls, pem: str | bytes) -> Proof:
        data = pem.encode("utf-8", "replace") if isinstance(pem, str) else bytes(pem)
        if len(data) > MAX_CSR_BYTES:
            raise InvalidArgument(f"proof CSR is larger than {MAX_CSR_BYTES} bytes")
        if b"PRIVATE KEY" in data:
            raise InvalidArgument(
                "input contains a private key: send only the CSR, and treat that key as leaked"
            )
        try:
            csr = x509.load_pem_x509_csr(data)
            attribute = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
        except x509.AttributeNotFound:
            raise InvalidArgument("proof CSR has no challengePassword attribute") from None
        except ValueError:
            raise InvalidArgument("proof CSR could not be parsed") from None
        value = attribute.value
        try:
            challenge = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise InvalidArgument("proof CSR's challengePassword is not the challenge") from None
        return cls(challenge, csr=csr)

    def verify(self, public_key: object) -> None:
        """Raises InvalidArgument unless the evidence was made with ``public_key``'s key."""
        if self.csr is not None:
            self._verify_csr(self.csr, public_key)
        elif self.signature is not None:
            _verify_signature(public_key, self.signature, self.challenge.encode("utf-8"))
        else:
            raise InvalidArgument("proof of possession has no signature and no CSR")

    @staticmethod
    def _verify_csr(csr: x509.CertificateSigningRequest, public_key: object) -> None:
        try:
            signed = csr.is_signature_valid
            same_key = _spki(csr.public_key()) == _spki(public_key)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            signed = same_key = False
        if not (signed and same_key):
            raise InvalidArgument("proof of possession did not verify")


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise TypeError("unsupported key type")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verify_signature(public_key: object, signature: bytes, data: bytes) -> None:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            raise InvalidArgument("proof of possession: key type not supported")
    except (InvalidSignature, ValueError):
        raise InvalidArgument("proof of possession did not verify") from None


def sign_challenge(key: PrivateKey, challenge: str) -> bytes:
    """The signature ``Proof.from_signature`` accepts (for the CLI helper and tests)."""
    data = challenge.encode("utf-8")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def csr_with_challenge(key: PrivateKey, challenge: str, common_name: str = "proof") -> bytes:
    """A PEM CSR carrying the challenge (what ``Proof.from_csr`` accepts)."""
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)
