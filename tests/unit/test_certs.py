import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from corem_ingress import devcerts
from corem_ingress.core import certs
from corem_ingress.core.errors import InvalidArgument

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca() -> devcerts.Issued:
    return devcerts.make_ca()


def test_parse_valid_device_cert(ca: devcerts.Issued) -> None:
    leaf = devcerts.issue(ca, "dev-1")
    info = certs.parse_device_cert(leaf.cert_pem, now=time.time())
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    assert info.fingerprint == certs.fingerprint_der(der) == leaf.fingerprint
    assert info.fingerprint == info.fingerprint.lower() and len(info.fingerprint) == 64
    assert "CN=dev-1" in info.subject
    assert info.key_type == "ec-secp256r1"
    assert not info.self_signed
    assert info.not_before < time.time() < info.not_after


def test_self_signed_is_detected() -> None:
    leaf = devcerts.issue(None, "self")
    assert certs.parse_device_cert(leaf.cert_pem, now=time.time()).self_signed


def _err(pem: bytes | str) -> str:
    with pytest.raises(InvalidArgument) as e:
        certs.parse_device_cert(pem, now=time.time())
    return e.value.message


def test_garbage(ca: devcerts.Issued) -> None:
    assert "not a PEM certificate" in _err(b"hello world")
    assert "could not be parsed" in _err(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )


def test_several_certs(ca: devcerts.Issued) -> None:
    a, b = devcerts.issue(ca, "a"), devcerts.issue(ca, "b")
    assert "several" in _err(a.cert_pem + b.cert_pem)


def test_private_key_pasted_in_is_refused_without_echo(ca: devcerts.Issued) -> None:
    leaf = devcerts.issue(ca, "a")
    msg = _err(leaf.cert_pem + leaf.key_pem)
    assert "private key" in msg
    assert "BEGIN" not in msg
    assert "private key" in _err(leaf.key_pem)


def test_ca_certificate_refused(ca: devcerts.Issued) -> None:
    assert "CA certificate" in _err(ca.cert_pem)


def test_expired_and_not_yet_valid(ca: devcerts.Issued) -> None:
    now = dt.datetime.now(dt.UTC)
    old = devcerts.issue(
        ca, "old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    assert "expired" in _err(old.cert_pem)
    future = devcerts.issue(
        ca, "f", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=10)
    )
    assert "not yet valid" in _err(future.cert_pem)


def test_small_rsa_refused(ca: devcerts.Issued) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = _build(key, ca)
    assert "2048" in _err(cert.public_bytes(serialization.Encoding.PEM))
    ok = devcerts.issue(ca, "r", key_kind="rsa2048")
    assert certs.parse_device_cert(ok.cert_pem, now=time.time()).key_type == "rsa2048"


def test_unsupported_key_types(ca: devcerts.Issued) -> None:
    dsa_key = dsa.generate_private_key(key_size=2048)
    assert "not supported" in _err(_build(dsa_key, ca).public_bytes(serialization.Encoding.PEM))
    k1 = ec.generate_private_key(ec.SECP256K1())
    assert "P-256" in _err(_build(k1, ca).public_bytes(serialization.Encoding.PEM))


def test_fingerprint_format() -> None:
    assert certs.check_fingerprint("a" * 64)
    for bad in ["A" * 64, "a" * 63, "g" * 64, ""]:
        with pytest.raises(InvalidArgument):
            certs.check_fingerprint(bad)


def _build(key, ca: devcerts.Issued) -> x509.Certificate:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "x")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )


#: ``openssl x509 -req`` without ``-extfile``: an X.509 v1 device certificate (valid to 2126).
V1_DEVICE_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBHjCBxgIUe4XFbBv2g5+GLbFm9OBa1BCjWAYwCgYIKoZIzj0EAwIwDzENMAsG
A1UEAwwEdjFjYTAgFw0yNjEyMDIwNDE3MDFaGA8yMTI2MTEwODA0MTcwMVowFDES
MBAGA1UEAwwJdjEtZGV2aWNlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEespc
BKscT285HDpDZhYR0h0OCg0/H39NoP1D2x3jEEjLE7ExJQC81u8+zUQBMKdW2vXy
kyWDIRZF2PI93oRH+DAKBggqhkjOPQQDAgNHADBEAiBNR1mdnL8hn1jCUNtkGBqT
MsSHdTgTOlDnJHt4+1FpHQIgMzQweCJVwnk7tMlaY0NZjicsHb36gnsjcTvVOs2H
GRI=
-----END CERTIFICATE-----
"""


def test_a_v1_device_certificate_is_refused_as_such() -> None:
    assert x509.load_pem_x509_certificate(V1_DEVICE_CERT.encode()).version is x509.Version.v1
    with pytest.raises(InvalidArgument, match=r"must be X\.509 v3"):
        certs.load_device_cert(V1_DEVICE_CERT, now=time.time())
