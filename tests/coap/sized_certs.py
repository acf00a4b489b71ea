"""Device certificates of an exact DER size (ECDSA P-256), for the tests of how a client's
certificate flight is split into datagrams: a short-named CA and leaves padded by a
subjectAltName DNS name."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from corem_ingress import devcerts

#: The smallest leaf this makes (no extension, one-letter names) is about 285 bytes.
_DNS_SUFFIX = ".example"


def short_ca() -> devcerts.Issued:
    """A CA with a one-letter name, so that leaves it signs can be as small as ~285 bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return devcerts.Issued(cert, key)


#: The longest common name (RFC 5280 ub-common-name).
_CN_MAX = 64


def _leaf(
    ca: devcerts.Issued, key: ec.EllipticCurvePrivateKey, cn_len: int, dns_len: int
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d" * cn_len)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if dns_len:
        san = x509.SubjectAlternativeName([x509.DNSName("p" * dns_len + _DNS_SUFFIX)])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


def der_size(cert: x509.Certificate) -> int:
    return len(cert.public_bytes(Encoding.DER))


def issue_sized(ca: devcerts.Issued, size: int) -> devcerts.Issued:
    """A leaf signed by ``ca`` whose DER is exactly ``size`` bytes: padded in its common
    name, or (bigger) in a subjectAltName DNS name."""
    key = ec.generate_private_key(ec.SECP256R1())
    smallest = der_size(_leaf(ca, key, 1, 0))
    if size < smallest - 2:
        raise ValueError(f"{size} bytes is below the smallest leaf ({smallest} bytes)")
    use_san = size - smallest > _CN_MAX - 8
    cn_len, dns_len = 1, 1 if use_san else 0
    for _ in range(60):  # the ECDSA signature's DER length varies by a byte or two
        cert = _leaf(ca, key, cn_len, dns_len)
        delta = size - der_size(cert)
        if delta == 0:
            return devcerts.Issued(cert, key)
        if use_san:
            dns_len = max(1, dns_len + delta)
        else:
            cn_len = min(_CN_MAX, max(1, cn_len + delta))
    raise RuntimeError(f"could not make a {size}-byte certificate")
