"""Registry against a real redis-server: provisioning, credentials, tenant isolation, audit."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.core import api_keys
from corem_ingress.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.core.trust import PeerChain
from corem_ingress.resolver import Resolver
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry

A = "cli:test"


async def test_provision_api_key_is_idempotent_and_secret_is_shown_once(
    registry: Registry, resolver: Resolver
) -> None:
    first = await registry.provision("acme", "hw-1", CredentialKind.API_KEY, actor=A)
    assert first.created and first.api_key is not None
    out = first.to_json()
    assert out["api_key"].startswith("sk_live_") and out["device_id"] == first.device.device_id
    ident = await resolver.resolve_api_key(first.api_key.api_key)
    assert (ident.tenant_id, ident.device_id) == ("acme", first.device.device_id)
    assert ident.credential_id == first.api_key.key_id

    again = await registry.provision("acme", "hw-1", CredentialKind.API_KEY, actor=A)
    assert not again.created and again.api_key is None
    assert "api_key" not in again.to_json() and "psk" not in again.to_json()
    assert again.device.device_id == first.device.device_id
    # Same hardware id in another tenant is another device.
    other = await registry.provision("globex", "hw-1", CredentialKind.API_KEY, actor=A)
    assert other.created and other.device.device_id != first.device.device_id


async def test_concurrent_provisioning_makes_one_device(
    registry: Registry, redis: aioredis.Redis
) -> None:
    results = await asyncio.gather(
        *(registry.provision("acme", "hw-race", CredentialKind.API_KEY, actor=A) for _ in range(50))
    )
    assert len({r.device.device_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert sum(r.api_key is not None for r in results) == 1
    assert await redis.zcard("{corem}:tenant:acme:devices") == 1
    # Exactly one API key exists for that device.
    creds = await registry.credentials("acme", results[0].device.device_id)
    assert len(creds) == 1


async def test_provision_psk_generated_and_assigned(registry: Registry, resolver: Resolver) -> None:
    gen = await registry.provision("acme", "hw-p1", CredentialKind.PSK, actor=A)
    assert gen.psk is not None and len(gen.psk.psk) == 32
    resolved = await resolver.resolve_psk(gen.psk.psk_identity)
    assert resolved.psk == gen.psk.psk and resolved.identity.device_id == gen.device.device_id

    assert gen.psk.psk_identity.startswith("acme:")
    key = os.urandom(32)
    assigned = await registry.provision(
        "acme", "hw-p2", CredentialKind.PSK, actor=A, psk_identity="acme:lamp-7", psk_bytes=key
    )
    assert assigned.to_json()["psk"] == key.hex()
    assert (await resolver.resolve_psk("acme:lamp-7")).psk == key
    # PSK identities are global (the DTLS handshake carries no tenant), so each tenant
    # assigns only in its own namespace: another tenant's identity is refused like any
    # identity outside its namespace, whether it exists or not (no existence oracle).
    for identity in ("acme:lamp-7", "acme:lamp-unused", "lamp-7"):
        with pytest.raises(InvalidArgument, match="prefix 'globex:'"):
            await registry.provision(
                "globex",
                "hw-p3",
                CredentialKind.PSK,
                actor=A,
                psk_identity=identity,
                psk_bytes=os.urandom(32),
            )
    # The refused calls created nothing.
    with pytest.raises(NotFound):
        await registry.find_device("globex", "hw-p3")
    # Within its own namespace a conflict names only the tenant's own device.
    with pytest.raises(AlreadyExists):
        await registry.provision(
            "acme", "hw-p4", CredentialKind.PSK, actor=A, psk_identity="acme:lamp-7"
        )


async def test_psk_is_sealed_at_rest(registry: Registry, redis: aioredis.Redis) -> None:
    key = os.urandom(32)
    res = await registry.provision("acme", "hw-s", CredentialKind.PSK, actor=A, psk_bytes=key)
    assert res.psk is not None
    raw = await redis.get(f"{{corem}}:auth:psk:{res.psk.psk_identity}")
    assert raw is not None
    # Neither hex nor base64 of it.
    assert key.hex() not in raw and base64.b64encode(key).decode()[:24] not in raw
    dump = " ".join([str(await redis.hgetall(k)) for k in await redis.keys("{corem}:cred:*")])
    assert key.hex() not in dump


async def test_provision_without_keyring_refuses_psk(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    reg = Registry(redis, keys, keyring=None, api_key_overlap=1, api_key_overlap_max=2)
    with pytest.raises(FailedPrecondition, match="KEK"):
        await reg.provision("acme", "hw", CredentialKind.PSK, actor=A)


async def test_x509_register_list_revoke_and_uniqueness(
    registry: Registry, resolver: Resolver
) -> None:
    ca = devcerts.make_ca()
    await registry.add_ca("acme", ca.cert_pem, actor=A)
    chain = PeerChain((ca.fingerprint,))
    c1, c2 = devcerts.issue(ca, "d1"), devcerts.issue(ca, "d1-next")
    dev = await registry.provision(
        "acme", "hw-x", CredentialKind.X509, actor=A, cert_pem=c1.cert_pem
    )
    assert dev.to_json()["fingerprint"] == c1.fingerprint
    device_id = dev.device.device_id
    assert (await resolver.resolve_cert(c1.fingerprint, chain=chain)).device_id == device_id
    # A second active cert for rotation.
    rec = await registry.register_cert("acme", device_id, c2.cert_pem, actor=A)
    assert rec.credential_id == c2.fingerprint and "CN=d1-next" in rec.extra["subject"]
    assert rec.extra["anchors"] == ca.fingerprint
    # Fingerprints are unique across tenants (here both tenants trust the same CA).
    await registry.add_ca("globex", ca.cert_pem, actor=A)
    other = await registry.provision("globex", "hw-y", CredentialKind.X509, actor=A)
    with pytest.raises(AlreadyExists):
        await registry.register_cert("globex", other.device.device_id, c1.cert_pem, actor=A)
    # Another tenant's fingerprint does not exist for you.
    with pytest.raises(NotFound):
        await registry.revoke_cert("globex", c1.fingerprint, actor=A)
    with pytest.raises(NotFound):
        await registry.revoke_cert("acme", "not-a-fingerprint", actor=A)

    page1, cursor = await registry.list_certs("acme", limit=1)
    assert len(page1) == 1 and cursor is not None
    page2, cursor2 = await registry.list_certs("acme", limit=1, cursor=cursor)
    assert len(page2) == 1 and cursor2 is None
    assert {page1[0].credential_id, page2[0].credential_id} == {c1.fingerprint, c2.fingerprint}
    assert (await registry.list_certs("globex"))[0] == []
    by_device, _ = await registry.list_certs("acme", device_id=device_id)
    assert len(by_device) == 2

    revoked = await registry.revoke_cert("acme", c1.fingerprint, actor=A)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_cert(c1.fingerprint, chain=chain)
    assert (await resolver.resolve_cert(c2.fingerprint, chain=chain)).device_id == device_id
    # A revoked certificate cannot come back.
    with pytest.raises(AlreadyExists):
        await registry.register_cert("acme", device_id, c1.cert_pem, actor=A)
    # Still listed, as revoked.
    listed = {r.credential_id: r.status for r in (await registry.list_certs("acme"))[0]}
    assert listed[c1.fingerprint] == "revoked"


async def test_one_credential_kind_per_device(registry: Registry) -> None:
    psk_dev = await registry.provision("acme", "hw-1k", CredentialKind.PSK, actor=A)
    with pytest.raises(FailedPrecondition):
        await registry.create_api_key("acme", psk_dev.device.device_id, actor=A)
    key_dev = await registry.provision("acme", "hw-2k", CredentialKind.API_KEY, actor=A)
    with pytest.raises(FailedPrecondition):
        await registry.register_cert(
            "acme",
            key_dev.device.device_id,
            devcerts.issue(devcerts.make_ca(), "z").cert_pem,
            actor=A,
        )
    with pytest.raises(FailedPrecondition):
        await registry.rotate_psk("acme", key_dev.device.device_id, actor=A)
    with pytest.raises(InvalidArgument):
        await registry.provision("acme", "hw-3k", CredentialKind.API_KEY, actor=A, psk_identity="x")


async def test_api_key_create_rotate_revoke(registry: Registry, resolver: Resolver, clock) -> None:  # type: ignore[no-untyped-def]
    dev = await registry.provision("acme", "hw-k", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    device_id = dev.device.device_id
    extra = await registry.create_api_key("acme", device_id, actor=A)
    assert (await resolver.resolve_api_key(extra.api_key)).credential_id == extra.key_id

    resolver._clock = clock  # control time for the overlap window
    rotated = await registry.rotate_api_key("acme", dev.api_key.key_id, actor=A, overlap=30)
    assert rotated.replaces == dev.api_key.key_id and rotated.old_key_expires_at is not None
    resolver.drop_cache()
    assert (await resolver.resolve_api_key(dev.api_key.api_key)).device_id == device_id
    assert (await resolver.resolve_api_key(rotated.api_key)).device_id == device_id
    clock.advance(31)  # past the overlap: the old key stops even from the cache
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(dev.api_key.api_key)
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(dev.api_key.api_key)
    assert (await resolver.resolve_api_key(rotated.api_key)).device_id == device_id
    # A rotated key cannot be rotated again.
    with pytest.raises(FailedPrecondition):
        await registry.rotate_api_key("acme", dev.api_key.key_id, actor=A)
    # Overlap bounds.
    with pytest.raises(InvalidArgument):
        await registry.rotate_api_key("acme", rotated.key_id, actor=A, overlap=10_000)
    with pytest.raises(InvalidArgument):
        await registry.rotate_api_key("acme", rotated.key_id, actor=A, overlap=-1)

    await registry.revoke_api_key("acme", rotated.key_id, actor=A)
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(rotated.api_key)
    # Tenant isolation and wrong device.
    with pytest.raises(NotFound):
        await registry.revoke_api_key("globex", extra.key_id, actor=A)
    with pytest.raises(NotFound):
        await registry.revoke_api_key(
            "acme", extra.key_id, actor=A, device_id="00000000-0000-4000-8000-000000000000"
        )
    creds = {
        c.credential_id: c.effective_status(clock())
        for c in await registry.credentials("acme", device_id)
    }
    assert creds == {
        dev.api_key.key_id: "expired",
        extra.key_id: "active",
        rotated.key_id: "revoked",
    }


async def test_overlap_end_is_enforced_by_redis_itself(
    registry: Registry, redis: aioredis.Redis
) -> None:
    dev = await registry.provision("acme", "hw-ttl", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    lookup_key = f"{{corem}}:auth:api_key:{api_keys.hash_key(dev.api_key.api_key)}"
    await registry.rotate_api_key("acme", dev.api_key.key_id, actor=A, overlap=0.5)
    ttl = await redis.pttl(lookup_key)
    assert 0 < ttl <= 600  # ms; the two clocks may differ by a millisecond
    # No broker node runs here: Redis alone removes the old key at the end of the window.
    for _ in range(50):
        if not await redis.exists(lookup_key):
            break
        await asyncio.sleep(0.05)
    assert not await redis.exists(lookup_key)


async def test_rotate_with_zero_overlap_revokes_at_once(
    registry: Registry, resolver: Resolver
) -> None:
    dev = await registry.provision("acme", "hw-z", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    new = await registry.rotate_api_key("acme", dev.api_key.key_id, actor=A, overlap=0)
    assert new.old_key_expires_at is None
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(dev.api_key.api_key)


async def test_psk_rotate_and_revoke(registry: Registry, resolver: Resolver) -> None:
    dev = await registry.provision(
        "acme", "hw-pr", CredentialKind.PSK, actor=A, psk_identity="acme:pr-1"
    )
    device_id = dev.device.device_id
    key = os.urandom(40)
    new = await registry.rotate_psk("acme", device_id, actor=A, psk_bytes=key)
    assert new.psk_identity != "acme:pr-1" and new.psk == key
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_psk("acme:pr-1")
    assert (await resolver.resolve_psk(new.psk_identity)).psk == key
    # Keeping the identity, new key: the old key no longer opens, the new one does.
    same = await registry.rotate_psk("acme", device_id, actor=A, psk_identity=new.psk_identity)
    resolver.drop_cache()
    assert (await resolver.resolve_psk(new.psk_identity)).psk == same.psk != new.psk
    await registry.revoke_psk("acme", device_id, actor=A)
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_psk(new.psk_identity)
    with pytest.raises(NotFound):
        await registry.revoke_psk("acme", device_id, actor=A)
    # After a revoke, rotate issues a fresh one.
    fresh = await registry.rotate_psk("acme", device_id, actor=A)
    assert (await resolver.resolve_psk(fresh.psk_identity)).identity.device_id == device_id


async def test_devices_get_list_and_tenant_isolation(registry: Registry) -> None:
    ids = []
    for i in range(5):
        r = await registry.provision("acme", f"hw-l{i}", CredentialKind.API_KEY, actor=A)
        ids.append(r.device.device_id)
    got = await registry.get_device("acme", ids[0])
    assert got.hardware_id == "hw-l0" and got.tenant_id == "acme"
    with pytest.raises(NotFound):
        await registry.get_device("globex", ids[0])
    with pytest.raises(NotFound):
        await registry.get_device("acme", "not-a-uuid")
    assert (await registry.find_device("acme", "hw-l3")).device_id == ids[3]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await registry.list_devices("acme", limit=2, cursor=cursor)
        seen += [d.device_id for d in page]
        if cursor is None:
            break
    assert seen == ids
    with pytest.raises(InvalidArgument):
        await registry.list_devices("acme", limit=0)
    with pytest.raises(InvalidArgument):
        await registry.list_devices("acme", cursor="abc")
    with pytest.raises(InvalidArgument):
        await registry.list_devices("acme", cursor="\u00b2")  # isdigit() but not a number
    assert (await registry.list_devices("globex"))[0] == []


async def test_audit_records_every_operation_without_secrets(
    registry: Registry, redis: aioredis.Redis
) -> None:
    dev = await registry.provision("acme", "hw-a", CredentialKind.API_KEY, actor="admin:ops")
    assert dev.api_key is not None
    await registry.rotate_api_key("acme", dev.api_key.key_id, actor="admin:ops")
    with pytest.raises(NotFound):
        await registry.revoke_api_key("acme", "key_nope", actor="admin:ops")
    entries = await redis.xrange("{corem}:audit")
    actions = [(f["action"], f["outcome"]) for _, f in entries]
    assert actions == [
        ("devices.provision", "OK"),
        ("keys.rotate", "OK"),
        ("keys.revoke", "NOT_FOUND"),
    ]
    for _, f in entries:
        assert f["actor"] == "admin:ops" and f["tenant_id"] == "acme" and float(f["at"]) > 0
    assert dev.api_key.api_key not in str(entries)


async def test_kek_rotation_reseal(redis: aioredis.Redis, keys: KeySchema) -> None:
    from corem_ingress.core.resolver_cache import ResolverCache

    old_line, new_line = generate_kek_line("old"), generate_kek_line("new")
    reg_old = Registry(
        redis, keys, keyring=KeyRing.parse(old_line), api_key_overlap=1, api_key_overlap_max=2
    )
    dev = await reg_old.provision("acme", "hw-kek", CredentialKind.PSK, actor=A)
    assert dev.psk is not None
    # Step 1: the new KEK first (active), the old one kept to open existing records.
    both = KeyRing.parse(new_line + "\n" + old_line)
    reg_new = Registry(redis, keys, keyring=both, api_key_overlap=1, api_key_overlap_max=2)
    assert await reg_new.reseal_psks(actor=A) == 1
    assert await reg_new.reseal_psks(actor=A) == 0
    # Step 2: the old KEK can go; every PSK still opens.
    res = Resolver(
        redis,
        keys,
        ResolverCache(ttl=5, negative_ttl=0, max_entries=10),
        keyring=KeyRing.parse(new_line),
    )
    assert (await res.resolve_psk(dev.psk.psk_identity)).psk == dev.psk.psk


async def test_psk_minimum_is_configurable_for_tinydtls_fleets(
    redis: aioredis.Redis, keys: KeySchema, keyring: KeyRing, resolver: Resolver
) -> None:
    strict = Registry(redis, keys, keyring=keyring, api_key_overlap=1, api_key_overlap_max=2)
    with pytest.raises(InvalidArgument, match="32 to 64"):
        await strict.provision(
            "acme", "hw-16a", CredentialKind.PSK, actor=A, psk_bytes=os.urandom(16)
        )
    # Stock tinydtls cannot use PSKs over 16 bytes: an operator may allow them, deliberately.
    lenient = Registry(
        redis, keys, keyring=keyring, api_key_overlap=1, api_key_overlap_max=2, psk_min_bytes=16
    )
    key = os.urandom(16)
    assigned = await lenient.provision("acme", "hw-16b", CredentialKind.PSK, actor=A, psk_bytes=key)
    generated = await lenient.provision("acme", "hw-16c", CredentialKind.PSK, actor=A)
    assert assigned.psk is not None and generated.psk is not None
    assert len(generated.psk.psk) == 16
    assert (await resolver.resolve_psk(assigned.psk.psk_identity)).psk == key
    with pytest.raises(InvalidArgument):
        await lenient.provision(
            "acme", "hw-15", CredentialKind.PSK, actor=A, psk_bytes=os.urandom(15)
        )


async def test_assigned_psk_with_low_entropy_is_refused_on_every_path(registry: Registry) -> None:
    """The registry itself refuses it, not only the admin API's and the CLI's parsers."""
    with pytest.raises(InvalidArgument, match="low entropy"):
        await registry.provision("acme", "hw-le", CredentialKind.PSK, actor=A, psk_bytes=bytes(32))
    good = await registry.provision(
        "acme", "hw-le2", CredentialKind.PSK, actor=A, psk_bytes=os.urandom(32)
    )
    assert good.psk is not None
    with pytest.raises(InvalidArgument, match="low entropy"):
        await registry.rotate_psk("acme", good.device.device_id, actor=A, psk_bytes=b"ab" * 20)


async def test_cached_api_key_answers_from_the_cache_only_and_refuses_alike(
    registry: Registry, resolver: Resolver
) -> None:
    """The HTTP uplink's synchronous first try: None until the key is cached, then its
    device; the same refusals as resolve_api_key (malformed, cached as revoked)."""
    dev = await registry.provision("acme", "hw-cached", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    raw = dev.api_key.api_key
    resolver.drop_cache()
    assert resolver.cached_api_key(raw) is None  # a miss: nothing read from Redis here
    ident = await resolver.resolve_api_key(raw)
    assert resolver.cached_api_key(raw) == ident
    with pytest.raises(Unauthenticated):
        resolver.cached_api_key(raw[:-1])  # malformed
    await registry.revoke_api_key("acme", dev.api_key.key_id, actor=A)
    resolver.drop_cache()
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(raw)  # caches it as unknown or revoked
    with pytest.raises(Unauthenticated):
        resolver.cached_api_key(raw)
