"""Test helpers for tenant trust anchors: trust a CA, allow self-signed devices, prove
possession of a key (the registry's own challenge, signed as a device would)."""

from __future__ import annotations

from corem_ingress import devcerts
from corem_ingress.core.proof import Proof, sign_challenge
from corem_ingress.store.registry import Registry

ACTOR = "test"


async def trust_ca(registry: Registry, tenant: str, ca: devcerts.Issued) -> None:
    """``ca`` becomes one of the tenant's trust anchors (idempotent)."""
    await registry.add_ca(tenant, ca.cert_pem, actor=ACTOR)


async def proof_for(registry: Registry, tenant: str, key: devcerts.PrivateKey) -> Proof:
    """A fresh proof of possession of ``key`` for ``tenant`` (single use)."""
    challenge = (await registry.new_challenge(tenant, actor=ACTOR)).challenge
    return Proof(challenge, signature=sign_challenge(key, challenge))


async def self_signed_allowed(registry: Registry, tenant: str) -> None:
    await registry.set_allow_self_signed(tenant, True, actor=ACTOR)


async def admission(
    registry: Registry, tenant: str, issued: devcerts.Issued, ca: devcerts.Issued | None
) -> Proof | None:
    """Make ``issued`` registrable for ``tenant``: trust its CA, or, self-signed (``ca`` None),
    allow self-signed devices and return the proof of possession to register it with."""
    if ca is not None:
        await trust_ca(registry, tenant, ca)
        return None
    await self_signed_allowed(registry, tenant)
    return await proof_for(registry, tenant, issued.key)


async def register_as_before_tenant_cas(
    registry: Registry, tenant: str, hardware_id: str, issued: devcerts.Issued
) -> str:
    """Provision an x509 device the way versions before tenant CAs did (no trust check,
    no anchors recorded): how a hijacked or legacy registration looks after an upgrade."""
    import time

    from corem_ingress.core import certs
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.store.registry.certs import AdmittedCert, cert_write

    device = await registry.provision(tenant, hardware_id, CredentialKind.X509, actor=ACTOR)
    device_id = device.device.device_id
    now = time.time()
    info = certs.parse_device_cert(issued.cert_pem, now=now)
    write = cert_write(tenant, device_id, AdmittedCert(info, (), False), now)
    await registry._add_credential(tenant, device_id, write, now)
    await registry.redis.hdel(registry.keys.credential(info.fingerprint), "anchors", "proof")
    return device_id
