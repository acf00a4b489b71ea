"""Tenant trust anchors, pure: chain verification at registration, the handshake decision,
CA certificates, tenant-scoped PSK identities, proof of possession, the trust cache."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from corem_ingress import devcerts
from corem_ingress.core import certs, proof, psk
from corem_ingress.core.errors import FailedPrecondition, InvalidArgument
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.resolver_cache import ResolverCache
from corem_ingress.core.trust import PeerChain, TenantTrust, verify_registration_chain

pytestmark = pytest.mark.unit

NOW = time.time()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    issuer: devcerts.Issued | None,
    *,
    ca: bool,
    path_length: int | None = None,
    days: tuple[float, float] = (-1, 365),
    key_cert_sign: bool = True,
) -> devcerts.Issued:
    """A certificate signed by ``issuer`` (self-signed when None), CA or leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    signer = issuer.key if issuer else key
    return devcerts.Issued(builder.sign(signer, hashes.SHA256()), key)


def anchors(*cas: devcerts.Issued) -> dict[str, x509.Certificate]:
    return {c.fingerprint: c.cert for c in cas}


# -- registration: the certificate must chain to one of the tenant's CAs ------------------------
def test_a_leaf_of_the_tenant_root_chains_to_it() -> None:
    root = make_cert("root", None, ca=True)
    leaf = make_cert("leaf", root, ca=False)
    assert verify_registration_chain(leaf.cert, anchors(root), now=NOW) == (root.fingerprint,)


def test_a_registered_intermediate_is_enough() -> None:
    root = make_cert("root", None, ca=True)
    inter = make_cert("inter", root, ca=True, path_length=0)
    leaf = make_cert("leaf", inter, ca=False)
    assert verify_registration_chain(leaf.cert, anchors(inter), now=NOW) == (inter.fingerprint,)
    # With only the root registered the intermediate is missing: no path.
    with pytest.raises(FailedPrecondition, match="does not chain"):
        verify_registration_chain(leaf.cert, anchors(root), now=NOW)
    # Both registered: the full path, up to the root.
    found = verify_registration_chain(leaf.cert, anchors(root, inter), now=NOW)
    assert found == (inter.fingerprint, root.fingerprint)


def test_another_tenants_ca_does_not_anchor_and_the_answer_names_no_certificate() -> None:
    ours, theirs = make_cert("ours", None, ca=True), make_cert("theirs", None, ca=True)
    leaf = make_cert("their-device", theirs, ca=False)
    with pytest.raises(FailedPrecondition) as e:
        verify_registration_chain(leaf.cert, anchors(ours), now=NOW)
    unknown = make_cert("unknown-device", theirs, ca=False)
    with pytest.raises(FailedPrecondition) as e2:
        verify_registration_chain(unknown.cert, anchors(ours), now=NOW)
    # A registered certificate of another tenant and an unknown one: the same answer.
    assert e.value.message == e2.value.message
    with pytest.raises(FailedPrecondition, match="no CA"):
        verify_registration_chain(leaf.cert, {}, now=NOW)


def test_path_length_ca_flag_signature_and_validity_are_checked() -> None:
    # pathLen 0 on the root: it may not issue an intermediate that issues leaves.
    root0 = make_cert("root0", None, ca=True, path_length=0)
    inter = make_cert("inter", root0, ca=True)
    leaf = make_cert("leaf", inter, ca=False)
    with pytest.raises(FailedPrecondition, match="path length"):
        verify_registration_chain(leaf.cert, anchors(root0, inter), now=NOW)
    # The intermediate alone is a trust anchor of its own (no root above it to obey).
    assert verify_registration_chain(leaf.cert, anchors(inter), now=NOW) == (inter.fingerprint,)
    # An "intermediate" that is no CA cannot issue.
    root = make_cert("root", None, ca=True)
    not_ca = make_cert("not-a-ca", root, ca=False)
    leaf2 = make_cert("leaf2", not_ca, ca=False)
    with pytest.raises(FailedPrecondition):
        verify_registration_chain(leaf2.cert, anchors(root), now=NOW)
    # Same subject, another key: the signature does not verify.
    impostor = make_cert("root", None, ca=True)
    leaf3 = make_cert("leaf3", root, ca=False)
    with pytest.raises(FailedPrecondition):
        verify_registration_chain(leaf3.cert, anchors(impostor), now=NOW)
    # An anchor outside its validity (at the time asked about).
    old_root = make_cert("old-root", None, ca=True, days=(-10, 1))
    leaf4 = make_cert("leaf4", old_root, ca=False, days=(-1, 30))
    assert verify_registration_chain(leaf4.cert, anchors(old_root), now=NOW)
    with pytest.raises(FailedPrecondition, match="not valid at validation time"):
        verify_registration_chain(leaf4.cert, anchors(old_root), now=NOW + 5 * 86_400)


# -- the handshake decision ------------------------------------------------------------------
def test_tenant_trust_admits_a_chain_through_one_of_its_cas() -> None:
    trust = TenantTrust(frozenset({"a" * 64}))
    assert trust.admits(PeerChain(("b" * 64, "a" * 64)), proven_self_signed=False)
    assert not trust.admits(PeerChain(("b" * 64,)), proven_self_signed=False)
    # A lone leaf: only self-signed with proof, where the tenant allows it.
    lone = PeerChain(())
    assert lone.leaf_only
    assert not trust.admits(lone, proven_self_signed=True)
    allowing = TenantTrust(frozenset(), allow_self_signed=True)
    assert not allowing.admits(lone, proven_self_signed=False)
    assert allowing.admits(lone, proven_self_signed=True)


def test_peer_chain_from_ders_skips_the_leaf() -> None:
    root = make_cert("root", None, ca=True)
    leaf = make_cert("leaf", root, ca=False)
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = PeerChain.from_ders([c.cert.public_bytes(Encoding.DER) for c in (leaf, root)])
    assert chain == PeerChain((root.fingerprint,))


# -- CA certificates -------------------------------------------------------------------------
def test_load_ca_cert() -> None:
    root = make_cert("root", None, ca=True, path_length=1)
    info, _cert = certs.load_ca_cert(root.cert_pem, now=NOW)
    assert (info.fingerprint, info.path_length, info.self_signed) == (root.fingerprint, 1, True)
    assert info.key_type == "ec-secp256r1" and "CN=root" in info.subject
    with pytest.raises(InvalidArgument, match="not a CA"):
        certs.load_ca_cert(make_cert("leaf", root, ca=False).cert_pem, now=NOW)
    with pytest.raises(InvalidArgument, match="keyCertSign"):
        certs.load_ca_cert(make_cert("x", None, ca=True, key_cert_sign=False).cert_pem, now=NOW)
    with pytest.raises(InvalidArgument, match="expired"):
        certs.load_ca_cert(make_cert("y", None, ca=True, days=(-5, -1)).cert_pem, now=NOW)
    with pytest.raises(InvalidArgument, match="private key"):
        certs.load_ca_cert(root.cert_pem + root.key_pem, now=NOW)
    with pytest.raises(InvalidArgument, match="several"):
        certs.load_ca_cert(root.cert_pem + root.cert_pem, now=NOW)
    # Registration's path validation cannot use an Ed25519 CA: refused when it is added.
    ed_key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    ed_ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ed"))
        .issuer_name(_name("ed"))
        .public_key(ed_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ed_key, None)
    )
    with pytest.raises(InvalidArgument, match="Ed25519"):
        certs.load_ca_cert(ed_ca.public_bytes(certs.Encoding.PEM), now=NOW)


# -- PSK identities in the tenant's namespace --------------------------------------------------
def test_assigned_psk_identity_must_carry_the_tenant_prefix() -> None:
    assert psk.check_tenant_identity("acme", "acme:lamp-7") == "acme:lamp-7"
    for bad in ("lamp-7", "globex:lamp-7", "acme:", "acmex:lamp", "ACME:lamp"):
        with pytest.raises(InvalidArgument):
            psk.check_tenant_identity("acme", bad)
    assert psk.generate_identity("acme", "SN-1").startswith("acme:SN-1:")


# -- proof of possession -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["p256", "p384", "rsa2048", "ed25519"],
)
def test_signature_proof_verifies_only_with_the_key(key: proof.PrivateKey) -> None:
    _token, challenge = proof.new_challenge("acme")
    import base64

    sig = base64.b64encode(proof.sign_challenge(key, challenge)).decode()
    proof.Proof.from_signature(challenge, sig).verify(key.public_key())
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(InvalidArgument, match="did not verify"):
        proof.Proof.from_signature(challenge, sig).verify(other)
    _t2, another = proof.new_challenge("acme")
    with pytest.raises(InvalidArgument, match="did not verify"):
        proof.Proof.from_signature(another, sig).verify(key.public_key())


def test_csr_proof_carries_the_challenge() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    _token, challenge = proof.new_challenge("acme")
    given = proof.Proof.from_csr(proof.csr_with_challenge(key, challenge))
    assert given.challenge == challenge
    given.verify(key.public_key())
    with pytest.raises(InvalidArgument, match="did not verify"):
        given.verify(ec.generate_private_key(ec.SECP256R1()).public_key())
    no_challenge = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("x"))
        .sign(key, hashes.SHA256())
        .public_bytes(certs.Encoding.PEM)
    )
    with pytest.raises(InvalidArgument, match="challengePassword"):
        proof.Proof.from_csr(no_challenge)
    with pytest.raises(InvalidArgument, match="could not be parsed"):
        proof.Proof.from_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END ...")


def test_challenges_are_bound_to_their_tenant() -> None:
    token, challenge = proof.new_challenge("acme")
    assert proof.challenge_token(challenge, "acme") == token
    for tenant, text in [
        ("globex", challenge),
        ("acme", challenge.replace("corem-pop-v1", "corem-pop-v2")),
        ("acme", challenge + "x"),
        ("acme", "acme"),
        ("acme", ""),
    ]:
        with pytest.raises(InvalidArgument):
            proof.challenge_token(text, tenant)
    for bad in ("not base64!", ""):
        with pytest.raises(InvalidArgument):
            proof.Proof.from_signature(challenge, bad)


# -- the trust cache ----------------------------------------------------------------------------
def test_trust_cache_ttl_eviction_and_stale_reads() -> None:
    cache = ResolverCache(ttl=30, negative_ttl=2, max_entries=2)
    trust = TenantTrust(frozenset({"a" * 64}))
    cache.put_trust("acme", trust, 100.0, epoch=cache.trust_epoch)
    assert cache.get_trust("acme", 110.0) == trust
    assert cache.get_trust("acme", 131.0) is None  # past its TTL
    # A read that began before a trust event is not stored (it may be stale).
    epoch = cache.trust_epoch
    cache.evict_trust("acme")
    cache.put_trust("acme", trust, 100.0, epoch=epoch)
    assert cache.get_trust("acme", 100.0) is None
    # LRU-bounded, and cleared with the rest.
    for t in ("a", "b", "c"):
        cache.put_trust(t, trust, 100.0, epoch=cache.trust_epoch)
    assert cache.get_trust("a", 100.0) is None and cache.get_trust("c", 100.0) == trust
    ident = DeviceIdentity("acme", "d", CredentialKind.X509, "f")
    cache.put(CredentialKind.X509, "f", ident, 100.0, proven_self_signed=True)
    entry = cache.get(CredentialKind.X509, "f", 100.0)
    assert entry is not None and entry.proven_self_signed
    cache.clear()
    assert cache.get_trust("c", 100.0) is None
