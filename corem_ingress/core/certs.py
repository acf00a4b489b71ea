"""Device certificates: PEM in, exactly one end-entity certificate out, fingerprinted.

The fingerprint (SHA-256 of the DER bytes, lower-case hex) is the identity anchor
for mTLS and DTLS lookups. Errors never echo the submitted text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress.core.errors import InvalidArgument

MIN_RSA_BITS = 2048
ALLOWED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MAX_PEM_BYTES = 16 * 1024

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class CertInfo:
    fingerprint: str
    subject: str
    issuer: str
    serial: str
    not_before: float
    not_after: float
    key_type: str
    self_signed: bool

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)  # every field, as operators see it


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def check_fingerprint(value: str) -> str:
    if not isinstance(value, str) or not _FINGERPRINT_RE.fullmatch(value):
        raise InvalidArgument(
            "fingerprint must be 64 lower-case hex characters (SHA-256 of the DER)"
        )
    return value


def _key_type(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        raise InvalidArgument("certificate public key type is not supported") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidArgument(f"RSA keys must be at least {MIN_RSA_BITS} bits")
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise InvalidArgument("EC certificates must use P-256, P-384 or P-521")
        return f"ec-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    raise InvalidArgument(
        "certificate key type is not supported (use RSA >= 2048, ECDSA or Ed25519)"
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    except (x509.DuplicateExtension, ValueError):  # parsed lazily: a client's bad input
        raise InvalidArgument("certificate extensions could not be parsed") from None
    return bool(bc.ca)


def is_self_signed(cert: x509.Certificate) -> bool:
    """Issued by itself: its subject is its issuer and its own key verifies it."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # InvalidSignature, ValueError, TypeError: all mean 'not self-signed'
        return False
    return True


def _load_one_cert(pem: str | bytes, what: str) -> x509.Certificate:
    """Exactly one PEM certificate, no private key; errors never echo the input."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else bytes(pem)
    if len(data) > MAX_PEM_BYTES:
        raise InvalidArgument(f"certificate PEM is larger than {MAX_PEM_BYTES} bytes")
    blocks = [m.group(1) for m in _BEGIN.finditer(data)]
    if any(b"PRIVATE KEY" in label for label in blocks):
        raise InvalidArgument(
            "input contains a private key: send only the certificate, and treat that key as leaked"
        )
    cert_blocks = [label for label in blocks if label == b"CERTIFICATE"]
    if not cert_blocks:
        raise InvalidArgument("input is not a PEM certificate")
    if len(cert_blocks) > 1:
        raise InvalidArgument(f"input holds several certificates: send exactly one {what}")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise InvalidArgument("certificate PEM could not be parsed") from None


def fingerprint_pem(pem: str | bytes) -> str:
    """The fingerprint of exactly one PEM certificate (any kind, valid or not)."""
    return fingerprint_der(_load_one_cert(pem, "certificate").public_bytes(Encoding.DER))


def _check_validity(cert: x509.Certificate, now: float) -> tuple[float, float]:
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    if now < not_before:
        raise InvalidArgument("certificate is not yet valid")
    if now >= not_after:
        raise InvalidArgument("certificate has expired")
    return not_before, not_after


def load_device_cert(pem: str | bytes, *, now: float) -> tuple[CertInfo, x509.Certificate]:
    """Validate a device certificate PEM: its description and the parsed certificate."""
    cert = _load_one_cert(pem, "device certificate")
    if cert.version is not x509.Version.v3:
        # Path validation (RFC 5280) needs v3; said here, the same for every tenant, rather
        # than as a chain error after the tenant's CAs were looked at.
        raise InvalidArgument(
            "a device certificate must be X.509 v3 "
            "(openssl x509 -req writes v1 unless given -extfile with extensions)"
        )
    if _is_ca(cert):
        raise InvalidArgument("a CA certificate cannot be a device certificate")
    return CertInfo(**_described(cert, _key_type(cert), now)), cert


def _described(cert: x509.Certificate, key_type: str, now: float) -> dict[str, Any]:
    """The fields CertInfo and CaInfo share (validity checked against ``now``)."""
    not_before, not_after = _check_validity(cert, now)
    return {
        "fingerprint": fingerprint_der(cert.public_bytes(Encoding.DER)),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": not_before,
        "not_after": not_after,
        "key_type": key_type,
        "self_signed": is_self_signed(cert),
    }


def parse_device_cert(pem: str | bytes, *, now: float) -> CertInfo:
    """Validate a device certificate PEM and describe it. ``now`` is a UNIX timestamp."""
    return load_device_cert(pem, now=now)[0]


@dataclass(frozen=True, slots=True)
class CaInfo:
    """A tenant's trust anchor (root or intermediate CA), as listed to operators."""

    fingerprint: str
    subject: str
    issuer: str
    serial: str
    not_before: float
    not_after: float
    key_type: str
    #: basicConstraints pathLenConstraint (None: unlimited).
    path_length: int | None
    #: A root (self-signed) rather than an intermediate.
    self_signed: bool

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)  # every field, as operators see it


def load_ca_cert(pem: str | bytes, *, now: float) -> tuple[CaInfo, x509.Certificate]:
    """Validate a CA certificate PEM (basicConstraints CA, keyCertSign, in its validity)."""
    cert = _load_one_cert(pem, "CA certificate")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise InvalidArgument("not a CA certificate (no basicConstraints CA:TRUE)") from None
    except (x509.DuplicateExtension, ValueError):
        raise InvalidArgument("certificate extensions could not be parsed") from None
    if not bc.ca:
        raise InvalidArgument("not a CA certificate (basicConstraints CA:FALSE)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None  # allowed by RFC 5280 for a CA; OpenSSL accepts it too
    except (x509.DuplicateExtension, ValueError):
        raise InvalidArgument("certificate extensions could not be parsed") from None
    if usage is not None and not usage.key_cert_sign:
        raise InvalidArgument("CA certificate's keyUsage does not allow keyCertSign")
    key_type = _key_type(cert)
    if key_type == "ed25519":
        # Path validation at registration (cryptography's verifier) refuses Ed25519 CAs.
        raise InvalidArgument("Ed25519 CA certificates are not supported (use ECDSA or RSA)")
    return CaInfo(**_described(cert, key_type, now), path_length=bc.path_length), cert
