"""Development certificates (DEV ONLY): a CA, a server cert for localhost, a few device certs.

The same helpers make certificates in tests and in the fleet simulator. Nothing
here is fit for production: production CAs belong to the operator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corem_ingress.core.certs import fingerprint_der

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DEV_MARK = "corem-ingress DEV ONLY"


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint_der(self.cert.public_bytes(serialization.Encoding.DER))

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind.startswith("rsa"):
        bits = int(kind[3:] or 2048)
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError(f"unknown key kind {kind}")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_MARK),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(cn: str = "corem-ingress dev CA", *, days: int = 3650) -> Issued:
    key = new_key("ec")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued | None,
    cn: str,
    *,
    server: bool = False,
    key_kind: str = "ec",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    is_ca: bool = False,
) -> Issued:
    """A leaf signed by ``ca``, or self-signed when ``ca`` is None."""
    key = new_key(key_kind)
    now = _now()
    issuer_name = ca.cert.subject if ca else _name(cn)
    signer = ca.key if ca else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def write_dev_certs(out: Path, *, devices: int = 3) -> dict[str, object]:
    """Write ca.pem/ca.key, server.pem/server.key and devices/; returns a JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "devices").mkdir(exist_ok=True)
    ca = make_ca()
    ca.write(out / "ca.pem", out / "ca.key")
    server = issue(ca, "localhost", server=True)
    server.write(out / "server.pem", out / "server.key")
    device_list = []
    for i in range(1, devices + 1):
        dev = issue(ca, f"dev-device-{i}")
        dev.write(out / "devices" / f"device-{i}.pem", out / "devices" / f"device-{i}.key")
        device_list.append({"name": f"device-{i}", "fingerprint": dev.fingerprint})
    self_signed = issue(None, "dev-self-signed-device")
    self_signed.write(out / "devices" / "self-signed.pem", out / "devices" / "self-signed.key")
    device_list.append({"name": "self-signed", "fingerprint": self_signed.fingerprint})
    (out / "README.md").write_text(
        "# DEV ONLY certificates\n\nMade by `corem-ingress dev-certs`. The keys are not secret: "
        "never use these outside a development machine.\n"
    )
    return {
        "out": str(out),
        "ca": str(out / "ca.pem"),
        "server": str(out / "server.pem"),
        "devices": device_list,
        "warning": "DEV ONLY: do not use in production",
    }
