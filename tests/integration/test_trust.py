"""Per-tenant trust anchors against a real redis-server (issue 12 §1 and the certificate
existence oracle of §4): tenant CAs, registration checks, proof of possession, the
resolver's trust cache, and CA removal reaching live sessions on every node."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    IngressError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.proof import Proof, csr_with_challenge, sign_challenge
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.trust import PeerChain
from corem_ingress.resolver import Resolver
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry, proofs
from tests.integration.test_revocation_bus import Orders
from tests.pki import proof_for, register_as_before_tenant_cas, self_signed_allowed, trust_ca

A = "cli:test"
X509 = CredentialKind.X509


async def _error(aw: object) -> IngressError:
    try:
        await aw  # type: ignore[misc]
    except IngressError as exc:
        return exc
    raise AssertionError("no error")


async def test_cross_tenant_certificate_hijack_is_refused(
    registry: Registry, resolver: Resolver
) -> None:
    """The review's reproduction: B provisions A's device certificate first. Before tenant
    CAs that was 201 and A's own registration 409, A's device then authenticated as B's."""
    ca_a, ca_b = devcerts.make_ca("A's CA"), devcerts.make_ca("B's CA")
    await trust_ca(registry, "tenant-a", ca_a)
    await trust_ca(registry, "tenant-b", ca_b)
    device_cert = devcerts.issue(ca_a, "a-device")
    with pytest.raises(FailedPrecondition, match="does not chain to a CA registered"):
        await registry.provision("tenant-b", "stolen", X509, actor=A, cert_pem=device_cert.cert_pem)
    with pytest.raises(NotFound):
        await registry.find_device("tenant-b", "stolen")  # nothing was created
    mine = await registry.provision("tenant-a", "own", X509, actor=A, cert_pem=device_cert.cert_pem)
    assert mine.created
    ident = await resolver.resolve_cert(
        device_cert.fingerprint, chain=PeerChain((ca_a.fingerprint,))
    )
    assert (ident.tenant_id, ident.device_id) == ("tenant-a", mine.device.device_id)
    # Adding A's (public) CA certificate needs its key through the API; here B has no way to
    # vouch for it either: a chain through A's CA is not B's.
    with pytest.raises(Unauthenticated):
        await resolver.resolve_cert(device_cert.fingerprint, chain=PeerChain((ca_b.fingerprint,)))


async def test_another_tenants_certificate_answers_like_an_unknown_one(registry: Registry) -> None:
    """No existence oracle: B registering A's registered certificate gets exactly the answer
    of a certificate nobody registered (both are chain errors), in provisioning and
    RegisterDeviceCert alike, with or without CAs of its own."""
    ca_a = devcerts.make_ca("A's CA")
    await trust_ca(registry, "tenant-a", ca_a)
    registered, unknown = devcerts.issue(ca_a, "registered"), devcerts.issue(ca_a, "unknown")
    await registry.provision("tenant-a", "r", X509, actor=A, cert_pem=registered.cert_pem)
    b_device = (await registry.provision("tenant-b", "x", X509, actor=A)).device.device_id
    for _with_own_ca in (False, True):
        answers = []
        for cert in (registered, unknown):
            prov = await _error(
                registry.provision("tenant-b", "p", X509, actor=A, cert_pem=cert.cert_pem)
            )
            reg = await _error(registry.register_cert("tenant-b", b_device, cert.cert_pem, actor=A))
            answers.append([(type(e), e.code, e.message) for e in (prov, reg)])
        assert answers[0] == answers[1], answers
        assert answers[0][0][0] is FailedPrecondition
        await trust_ca(registry, "tenant-b", devcerts.make_ca("B's CA"))


async def test_self_signed_needs_the_tenant_setting_and_a_single_use_proof(
    registry: Registry, redis: aioredis.Redis
) -> None:
    leaf = devcerts.issue(None, "self-signed")
    dev = (await registry.provision("acme", "ss", X509, actor=A)).device.device_id

    async def register(proof: Proof | None) -> IngressError | None:
        try:
            await registry.register_cert(
                "acme", dev, leaf.cert_pem, actor=A, proof_of_possession=proof
            )
        except IngressError as exc:
            return exc
        return None

    # Off by default, proof or not.
    refused = await register(await proof_for(registry, "acme", leaf.key))
    assert isinstance(refused, FailedPrecondition) and "not allowed" in refused.message
    await self_signed_allowed(registry, "acme")
    assert (await registry.tenant_settings("acme")).allow_self_signed
    assert not (await registry.tenant_settings("globex")).allow_self_signed
    missing = await register(None)
    assert isinstance(missing, InvalidArgument) and "proof of possession" in missing.message
    # A signature by another key: refused, and the challenge is used up by the attempt.
    challenge = (await registry.new_challenge("acme", actor=A)).challenge
    ttl = await redis.ttl("{corem}:challenge:" + challenge.rsplit(":", 1)[1])
    assert 0 < ttl <= 300  # expires by itself
    wrong_key = devcerts.new_key()
    bad = await register(Proof(challenge, signature=sign_challenge(wrong_key, challenge)))
    assert isinstance(bad, InvalidArgument) and "did not verify" in bad.message
    reused = await register(Proof(challenge, signature=sign_challenge(leaf.key, challenge)))
    assert isinstance(reused, InvalidArgument) and "already used" in reused.message
    # Another tenant's challenge cannot be used (nor used up).
    theirs = (await registry.new_challenge("globex", actor=A)).challenge
    foreign = await register(Proof(theirs, signature=sign_challenge(leaf.key, theirs)))
    assert isinstance(foreign, InvalidArgument) and "not valid for this tenant" in foreign.message
    assert await redis.exists("{corem}:challenge:" + theirs.rsplit(":", 1)[1]) == 1
    # A fresh challenge signed by the certificate's key: registered, flagged as proven.
    assert await register(await proof_for(registry, "acme", leaf.key)) is None
    record = (await registry.credentials("acme", dev))[0]
    assert record.extra["self_signed"] == "1" and record.extra["proof"] == "1"
    # The CSR form of the proof works too.
    other = devcerts.issue(None, "self-signed-2")
    challenge = (await registry.new_challenge("acme", actor=A)).challenge
    csr = Proof.from_csr(csr_with_challenge(other.key, challenge))
    rec = await registry.register_cert(
        "acme", dev, other.cert_pem, actor=A, proof_of_possession=csr
    )
    assert rec.credential_id == other.fingerprint


async def test_a_tenant_holds_a_bounded_number_of_unused_challenges(
    redis: aioredis.Redis, keys: KeySchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator token cannot fill Redis with challenges: past the cap, 429 with the time
    until the oldest expires; using one (even wrongly) or its expiry frees a place; the cap
    is per tenant."""
    monkeypatch.setattr(proofs, "MAX_OUTSTANDING_CHALLENGES", 3)
    start = float(int(time.time()))
    now = [start]
    registry = Registry(
        redis,
        keys,
        keyring=None,
        api_key_overlap=60,
        api_key_overlap_max=3600,
        clock=lambda: now[0],
    )
    leaf = devcerts.issue(None, "cap")
    issued = []
    for _ in range(3):
        issued.append((await registry.new_challenge("acme", actor=A)).challenge)
        now[0] += 10
    full = await _error(registry.new_challenge("acme", actor=A))
    assert isinstance(full, ResourceExhausted) and "3 unused challenges" in full.message
    assert full.retry_after_s == 300 - 30  # until the oldest expires
    assert await redis.zcard(keys.tenant_challenges("acme")) == 3
    assert (await registry.new_challenge("globex", actor=A)).challenge  # per tenant
    # A wrong proof uses its challenge up, and frees its place.
    dev = (await registry.provision("acme", "cap", X509, actor=A)).device.device_id
    await self_signed_allowed(registry, "acme")
    wrong = Proof(issued[0], signature=sign_challenge(devcerts.new_key(), issued[0]))
    assert isinstance(
        await _error(
            registry.register_cert("acme", dev, leaf.cert_pem, actor=A, proof_of_possession=wrong)
        ),
        InvalidArgument,
    )
    assert await redis.zcard(keys.tenant_challenges("acme")) == 2
    await registry.new_challenge("acme", actor=A)
    assert isinstance(await _error(registry.new_challenge("acme", actor=A)), ResourceExhausted)
    # Expired ones free theirs (the second was issued at +10 s).
    now[0] = start + 10 + 300
    await registry.new_challenge("acme", actor=A)
    assert await redis.zcard(keys.tenant_challenges("acme")) == 3
    # Refusals are audited like every admin action.
    outcomes = [e["outcome"] for _id, e in await redis.xrange(keys.audit_stream)]
    assert outcomes.count("RESOURCE_EXHAUSTED") == 2


async def test_a_ca_can_ask_its_devices_for_proof(registry: Registry) -> None:
    """For a CA trusted by several tenants (a manufacturer's): without the device's key,
    another tenant gets a proof error before anything could say "already registered"."""
    shared = devcerts.make_ca("manufacturer CA")
    for tenant in ("tenant-a", "tenant-b"):
        await registry.add_ca(tenant, shared.cert_pem, actor=A, require_device_proof=True)
    cert = devcerts.issue(shared, "sensor")
    dev_a = (await registry.provision("tenant-a", "s", X509, actor=A)).device.device_id
    with pytest.raises(InvalidArgument, match="asks for proof"):
        await registry.register_cert("tenant-a", dev_a, cert.cert_pem, actor=A)
    proof = await proof_for(registry, "tenant-a", cert.key)
    await registry.register_cert(
        "tenant-a", dev_a, cert.cert_pem, actor=A, proof_of_possession=proof
    )
    dev_b = (await registry.provision("tenant-b", "s", X509, actor=A)).device.device_id
    without_key = await _error(registry.register_cert("tenant-b", dev_b, cert.cert_pem, actor=A))
    unknown = devcerts.issue(shared, "not-registered")
    unknown_answer = await _error(
        registry.register_cert("tenant-b", dev_b, unknown.cert_pem, actor=A)
    )
    assert (without_key.code, without_key.message) == (unknown_answer.code, unknown_answer.message)
    # Only with the device's key does B learn that the certificate is taken.
    with pytest.raises(AlreadyExists):
        await registry.register_cert(
            "tenant-b",
            dev_b,
            cert.cert_pem,
            actor=A,
            proof_of_possession=await proof_for(registry, "tenant-b", cert.key),
        )


async def test_cas_are_per_tenant_idempotent_audited_and_announced(
    registry: Registry, redis: aioredis.Redis
) -> None:
    ca = devcerts.make_ca("acme CA")
    pubsub = redis.pubsub()
    await pubsub.subscribe("corem:bus")
    record, added = await registry.add_ca("acme", ca.cert_pem, actor=A)
    assert added and record.info.fingerprint == ca.fingerprint
    again, added_again = await registry.add_ca("acme", ca.cert_pem, actor=A)
    assert not added_again and again == record
    listed, cursor = await registry.list_cas("acme")
    assert [r.info.fingerprint for r in listed] == [ca.fingerprint] and cursor is None
    out = listed[0].to_json(0.0)
    assert {"subject", "not_before", "not_after", "key_type"} <= set(out)
    assert out["key_type"] == "ec-secp256r1" and "corem-ingress dev CA" not in str(out["subject"])
    # Another tenant's CA does not exist for you.
    assert (await registry.list_cas("globex"))[0] == []
    with pytest.raises(NotFound):
        await registry.remove_ca("globex", ca.fingerprint, actor=A)
    with pytest.raises(NotFound):
        await registry.get_ca("globex", ca.fingerprint)
    with pytest.raises(NotFound):
        await registry.remove_ca("acme", "not-hex", actor=A)
    # Not a CA, or a leaf: refused.
    with pytest.raises(InvalidArgument, match="not a CA"):
        await registry.add_ca("acme", devcerts.issue(ca, "leaf").cert_pem, actor=A)
    removed = await registry.remove_ca("acme", ca.fingerprint, actor=A)
    assert removed.info.fingerprint == ca.fingerprint
    assert (await registry.list_cas("acme"))[0] == []
    # One trust event per change (the idempotent add published none).
    events = []
    async with asyncio.timeout(5):
        while len(events) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                events.append(json.loads(message["data"]))
    assert [(e["type"], e["tenant_id"], e["lookup"]) for e in events] == [
        ("trust", "acme", ca.fingerprint),
        ("trust", "acme", ca.fingerprint),
    ]
    await pubsub.aclose()
    entries = await redis.xrange("{corem}:audit")
    actions = [(e[1]["action"], e[1]["tenant_id"], e[1]["outcome"]) for e in entries]
    assert ("cas.add", "acme", "OK") in actions and ("cas.remove", "acme", "OK") in actions
    assert ("cas.remove", "globex", "NOT_FOUND") in actions
    assert "BEGIN" not in json.dumps([e[1] for e in entries])


async def test_ca_removal_reaches_the_cache_and_live_sessions_on_every_node(
    start_node, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    """Removing a CA: each node drops the tenant's trust from its resolver cache (the DTLS
    callbacks decide from it) and closes the sessions whose chain ended in it;
    a session through another of the tenant's CAs and other tenants' sessions stay."""
    nodes = [await start_node([]), await start_node([])]
    removed_ca, kept_ca = devcerts.make_ca("removed"), devcerts.make_ca("kept")
    for ca in (removed_ca, kept_ca):
        await trust_ca(registry, "acme", ca)
    await trust_ca(registry, "globex", removed_ca)
    certs = {
        "acme-removed": ("acme", devcerts.issue(removed_ca, "a1"), removed_ca),
        "acme-kept": ("acme", devcerts.issue(kept_ca, "a2"), kept_ca),
        "globex": ("globex", devcerts.issue(removed_ca, "g1"), removed_ca),
    }
    for name, (tenant, cert, _ca) in certs.items():
        await registry.provision(tenant, name, X509, actor=A, cert_pem=cert.cert_pem)
    closed: dict[str, list[DisconnectOrder]] = {}
    for i, node in enumerate(nodes):
        hub, resolver = node.services.sessions, node.services.resolver
        for name, (_tenant, cert, ca) in certs.items():
            chain = PeerChain((ca.fingerprint,))
            ident = await resolver.resolve_cert(cert.fingerprint, chain=chain)
            assert resolver.cached_cert(cert.fingerprint, chain) == ident
            session = LiveSession(f"{name}@{i}", "mqtt", ident, cert.fingerprint, chain=chain)
            await hub.register_verified(session, closed.setdefault(name, []).append)
    orders = [Orders(node) for node in nodes]

    await registry.remove_ca("acme", removed_ca.fingerprint, actor=A)
    for o in orders:
        (order,) = await o.wait(1)
        assert order.session_id.startswith("acme-removed@")
        assert order.cause is Cause.TRUST_ANCHOR_REMOVED
    assert [len(closed.get(n, [])) for n in certs] == [2, 0, 0]
    for node in nodes:
        resolver = node.services.resolver
        _t, cert, ca = certs["acme-removed"]
        chain = PeerChain((ca.fingerprint,))
        # The event dropped the tenant's trust; re-reading it (the sessions' re-check did)
        # the cache now refuses synchronously, as the DTLS callback asks it.
        with pytest.raises(Unauthenticated) as cached_refusal:
            resolver.cached_cert(cert.fingerprint, chain)
        assert cached_refusal.value.cause is Cause.FOREIGN_CA
        with pytest.raises(Unauthenticated) as refused:
            await resolver.resolve_cert(cert.fingerprint, chain=chain)
        assert refused.value.cause is Cause.FOREIGN_CA
        assert resolver.cached_cert(cert.fingerprint) is not None  # the registration stays
        _t, kept, kept_ca = certs["acme-kept"]
        assert await resolver.resolve_cert(
            kept.fingerprint, chain=PeerChain((kept_ca.fingerprint,))
        )
        assert len(node.services.sessions) == 2


async def test_turning_self_signed_off_ends_self_signed_sessions(
    start_node, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    hub, resolver = node.services.sessions, node.services.resolver
    leaf = devcerts.issue(None, "lone")
    await self_signed_allowed(registry, "acme")
    await registry.provision(
        "acme",
        "lone",
        X509,
        actor=A,
        cert_pem=leaf.cert_pem,
        proof_of_possession=await proof_for(registry, "acme", leaf.key),
    )
    ident = await resolver.resolve_cert(leaf.fingerprint, chain=PeerChain(()))
    closed: list[DisconnectOrder] = []
    await hub.register_verified(
        LiveSession("lone", "coap", ident, leaf.fingerprint, chain=PeerChain(())), closed.append
    )
    orders = Orders(node)
    await registry.set_allow_self_signed("acme", False, actor=A)
    (order,) = await orders.wait(1)
    assert order.cause is Cause.TRUST_ANCHOR_REMOVED and len(closed) == 1
    with pytest.raises(Unauthenticated):
        await resolver.resolve_cert(leaf.fingerprint, chain=PeerChain(()))


async def test_check_issuers_lists_what_the_handshake_would_refuse(registry: Registry) -> None:
    """The upgrade check: certificates registered before tenant CAs whose issuer is not a CA
    of their tenant, self-signed ones without proof, and those whose CA was removed."""
    ca_a, ca_b = devcerts.make_ca("A's CA"), devcerts.make_ca("B's CA")
    hijacked = devcerts.issue(ca_a, "a-device")
    legacy_ok = devcerts.issue(ca_b, "b-device")
    legacy_self = devcerts.issue(None, "b-self")
    await register_as_before_tenant_cas(registry, "tenant-b", "hijacked", hijacked)
    await register_as_before_tenant_cas(registry, "tenant-b", "legacy-ok", legacy_ok)
    await register_as_before_tenant_cas(registry, "tenant-b", "legacy-self", legacy_self)
    await trust_ca(registry, "tenant-b", ca_b)
    await trust_ca(registry, "tenant-c", ca_a)
    removed = devcerts.issue(ca_a, "c-device")
    await registry.provision("tenant-c", "c", X509, actor=A, cert_pem=removed.cert_pem)
    await registry.remove_ca("tenant-c", ca_a.fingerprint, actor=A)

    report = await registry.check_issuers()
    problems = {p["fingerprint"]: p["problem"] for p in report["problems"]}  # type: ignore[union-attr]
    assert problems == {
        hijacked.fingerprint: "issuer_not_a_tenant_ca",
        legacy_self.fingerprint: "self_signed_without_proof",
        removed.fingerprint: "issuing_ca_removed",
    }
    assert report["checked"] == 4 and report["tenants"] == 2
    only_c = await registry.check_issuers("tenant-c")
    assert [p["tenant_id"] for p in only_c["problems"]] == ["tenant-c"]  # type: ignore[index,union-attr]


async def test_a_trust_event_drops_the_tenants_cached_trust(
    registry: Registry, resolver: Resolver
) -> None:
    """What the DTLS handshake's synchronous callback reads: after a trust event the cache
    can no longer vouch for the tenant's certificates until the async path re-reads Redis."""
    from corem_ingress.core.events import CredentialEvent, EventType

    ca = devcerts.make_ca()
    await trust_ca(registry, "acme", ca)
    cert = devcerts.issue(ca, "d")
    await registry.provision("acme", "d", X509, actor=A, cert_pem=cert.cert_pem)
    chain = PeerChain((ca.fingerprint,))
    assert resolver.cached_cert(cert.fingerprint, chain) is None  # nothing cached yet
    ident = await resolver.resolve_cert(cert.fingerprint, chain=None)  # the DTLS prefetch
    assert resolver.cached_cert(cert.fingerprint, chain) == ident
    with pytest.raises(Unauthenticated):
        resolver.cached_cert(cert.fingerprint, PeerChain(("0" * 64,)))
    resolver.apply_event(
        CredentialEvent(EventType.TRUST, X509, ca.fingerprint, "", "globex", "", 0.0)
    )
    assert resolver.cached_cert(cert.fingerprint, chain) == ident  # another tenant's event
    resolver.apply_event(
        CredentialEvent(EventType.TRUST, X509, ca.fingerprint, "", "acme", "", 0.0)
    )
    assert resolver.cached_cert(cert.fingerprint, chain) is None


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519", "csr"])
def test_the_documented_openssl_commands_make_valid_proofs(tmp_path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """docs/operations.md's recipes, run with the openssl command line."""
    import subprocess

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from corem_ingress.core import proof

    key: proof.PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else devcerts.new_key("rsa2048" if kind == "rsa" else "ec")
    )
    (tmp_path / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _token, challenge = proof.new_challenge("acme")
    env = {"C": challenge, "PATH": "/usr/bin:/bin"}
    commands = {
        "ec": 'printf %s "$C" | openssl dgst -sha256 -sign device.key | base64 -w0',
        "rsa": 'printf %s "$C" | openssl dgst -sha256 -sign device.key | base64 -w0',
        "ed25519": 'printf %s "$C" > c.txt; '
        "openssl pkeyutl -sign -inkey device.key -rawin -in c.txt | base64 -w0",
        "csr": "printf '[req]\\ndistinguished_name=dn\\nattributes=attrs\\nprompt=no\\n[dn]\\n"
        'CN=device\\n[attrs]\\nchallengePassword=%s\\n\' "$C" > csr.cnf; '
        "openssl req -new -key device.key -config csr.cnf -out req.pem; cat req.pem",
    }
    out = subprocess.run(
        ["sh", "-c", commands[kind]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    given = (
        proof.Proof.from_csr(out) if kind == "csr" else proof.Proof.from_signature(challenge, out)
    )
    assert given.challenge == challenge
    given.verify(key.public_key())
