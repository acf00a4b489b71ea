"""Just-in-time provisioning: the template and its decisions (core/jitp.py), pure."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corem_ingress.core import jitp
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.jitp import HardwareIdSource, JitpAction, JitpTemplate

pytestmark = pytest.mark.unit

KEY = ec.generate_private_key(ec.SECP256R1())


def cert(
    cn: str | None = "SN-0042", *sans: x509.GeneralName, serial: int = 0xBEEF
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(KEY.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def template(source: str, prefix: str = "") -> JitpTemplate:
    return JitpTemplate(HardwareIdSource(source), san_prefix=prefix)


def test_hardware_id_sources() -> None:
    c = cert(
        "SN-0042",
        x509.UniformResourceIdentifier("https://example.com/x"),
        x509.UniformResourceIdentifier("urn:dev:mac:0a1b2c"),
        x509.DNSName("dev-7.factory.example"),
    )
    assert jitp.hardware_id_of(c, template("subject_cn")) == "SN-0042"
    assert jitp.hardware_id_of(c, template("san_uri", "urn:dev:")) == "mac:0a1b2c"
    assert jitp.hardware_id_of(c, template("san_dns")) == "dev-7.factory.example"
    assert jitp.hardware_id_of(c, template("serial")) == "beef"


@pytest.mark.parametrize(
    ("c", "source", "prefix", "message"),
    [
        (cert(None), "subject_cn", "", "no subject_cn"),
        (cert("SN-1"), "san_uri", "", "no san_uri"),
        (cert("SN-1", x509.UniformResourceIdentifier("urn:other:1")), "san_uri", "urn:dev:", "no"),
        (cert("has space"), "subject_cn", "", "not a valid hardware_id"),
        (cert("SN-1", x509.DNSName("a/b")), "san_dns", "", "not a valid hardware_id"),
    ],
)
def test_missing_or_invalid_sources_are_refused(
    c: x509.Certificate, source: str, prefix: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        jitp.hardware_id_of(c, template(source, prefix))


def test_a_uri_with_characters_a_hardware_id_cannot_hold_is_refused() -> None:
    c = cert("SN", x509.UniformResourceIdentifier("https://example.com/x"))
    with pytest.raises(InvalidArgument):
        jitp.hardware_id_of(c, template("san_uri"))


def test_decisions() -> None:
    plain, rotating = JitpTemplate(), JitpTemplate(allow_certificate_rotation=True)
    assert jitp.decide(None, plain) is JitpAction.CREATE
    assert jitp.decide(CredentialKind.X509, plain) is JitpAction.REFUSE
    assert jitp.decide(CredentialKind.X509, rotating) is JitpAction.ROTATE
    # Mid-DTLS-handshake (possession not proven yet): create, never rotate.
    assert jitp.decide(None, rotating, possession_proven=False) is JitpAction.CREATE
    assert jitp.decide(CredentialKind.X509, rotating, possession_proven=False) is (
        JitpAction.REFUSE
    )
    # A device of another credential kind is never taken over by a certificate.
    assert jitp.decide(CredentialKind.API_KEY, rotating) is JitpAction.REFUSE
    assert jitp.decide(CredentialKind.PSK, rotating) is JitpAction.REFUSE


def test_templates_round_trip_and_bad_ones_are_refused() -> None:
    t = JitpTemplate(HardwareIdSource.SAN_URI, "urn:dev:", {"model": "x1"}, True)
    assert JitpTemplate.decode(t.encode()) == t
    assert JitpTemplate.from_json({}) == JitpTemplate()
    for bad in (
        [],
        {"hardware_id_from": "mac"},
        {"unknown": 1},
        {"metadata": {"k": 1}},
        {"metadata": {"": "v"}},
        {"allow_certificate_rotation": "yes"},
        {"metadata": {f"k{i}": "v" for i in range(jitp.MAX_METADATA + 1)}},
    ):
        with pytest.raises(InvalidArgument):
            JitpTemplate.from_json(bad)
