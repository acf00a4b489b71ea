"""The admin API of tenant trust anchors and proof of possession, and the existence
oracles of issue 12 §4: another tenant's certificate or PSK identity answers exactly like
one that does not exist. Every answer is checked against the OpenAPI document."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.core.proof import csr_with_challenge, sign_challenge
from corem_ingress.store.registry import Registry
from tests.http.conftest import Api

D = "/api/v1/devices"
CAS = "/api/v1/cas"


async def _challenge(api: Api, tenant: str) -> str:
    reply = await api.request("POST", "/api/v1/challenges", tenant=tenant)
    assert reply.status == 201
    return str(reply.body["challenge"])


async def _signed(api: Api, tenant: str, key: devcerts.PrivateKey) -> dict[str, str]:
    challenge = await _challenge(api, tenant)
    return {
        "challenge": challenge,
        "signature": base64.b64encode(sign_challenge(key, challenge)).decode(),
    }


async def test_cas_add_list_remove_with_proof_of_the_ca_key(
    api: Api, redis: aioredis.Redis
) -> None:
    ca = devcerts.make_ca("acme CA")
    body: dict[str, Any] = {"cert_pem": ca.cert_pem.decode()}
    # The CA certificate alone proves nothing (it is public): a proof is required ...
    assert (await api.request("POST", CAS, tenant="acme", json=body)).status == 400
    # ... made with the CA's own key, over this tenant's challenge.
    wrong = await _signed(api, "acme", devcerts.new_key())
    reply = await api.request("POST", CAS, tenant="acme", json={**body, "proof": wrong})
    assert reply.status == 400 and "did not verify" in reply.body["error"]["message"]
    foreign = await _signed(api, "globex", ca.key)
    reply = await api.request("POST", CAS, tenant="acme", json={**body, "proof": foreign})
    assert reply.status == 400
    added = await api.request(
        "POST", CAS, tenant="acme", json={**body, "proof": await _signed(api, "acme", ca.key)}
    )
    assert added.status == 201 and added.body["fingerprint"] == ca.fingerprint
    assert added.body["key_type"] == "ec-secp256r1" and added.body["self_signed"] is True
    assert added.body["require_device_proof"] is False and added.body["expired"] is False
    again = await api.add_ca("acme", ca)
    assert again.status == 200 and again.body == added.body
    for bad in (
        {**body, "proof": {"challenge": "x"}},
        {**body, "proof": {"csr_pem": "x", "signature": "AA=="}},
        {**body, "proof": "yes"},
        {**body, "proof": None},  # as strict as the schema: leave it out instead
        {**body, "proof": wrong, "require_device_proof": None},
        {**body, "require_device_proof": "yes"},
        {"cert_pem": devcerts.issue(ca, "leaf").cert_pem.decode(), "proof": wrong},
        {"cert_pem": ca.cert_pem.decode() + ca.key_pem.decode(), "proof": wrong},
    ):
        reply = await api.request("POST", CAS, tenant="acme", json=bad)
        assert reply.status == 400, bad
        assert "BEGIN" not in reply.body["error"]["message"]

    listed = await api.request("GET", CAS, tenant="acme")
    assert [c["fingerprint"] for c in listed.body["cas"]] == [ca.fingerprint]
    assert (await api.request("GET", f"{CAS}?limit=0", tenant="acme")).status == 400
    assert (await api.request("DELETE", f"{CAS}/{ca.fingerprint}", tenant="globex")).status == 404
    removed = await api.request("DELETE", f"{CAS}/{ca.fingerprint}", tenant="acme")
    assert removed.status == 200 and removed.body["fingerprint"] == ca.fingerprint
    assert (await api.request("DELETE", f"{CAS}/{ca.fingerprint}", tenant="acme")).status == 404
    assert (await api.request("DELETE", f"{CAS}/NOT-HEX", tenant="acme")).status == 404
    entries = [e[1] for e in await redis.xrange("{corem}:audit")]
    actions = {(e["action"], e["outcome"]) for e in entries}
    assert {("challenges.create", "OK"), ("cas.add", "OK"), ("cas.remove", "OK")} <= actions
    assert {("cas.list", "OK"), ("cas.add", "INVALID_ARGUMENT")} <= actions
    assert "PRIVATE" not in json.dumps(entries)


async def test_self_signed_device_certificates_with_proof(api: Api, registry: Registry) -> None:
    leaf = devcerts.issue(None, "self-signed")
    dev = await api.provision("acme", "hw-ss", "x509")
    path = f"{D}/{dev['device_id']}/certs"
    # Not allowed for the tenant (the default): 412, proof or not.
    reply = await api.request(
        "POST",
        path,
        tenant="acme",
        json={"pem": leaf.cert_pem.decode(), "proof": await _signed(api, "acme", leaf.key)},
    )
    assert reply.status == 412
    await registry.set_allow_self_signed("acme", True, actor="test")
    assert (
        await api.request("POST", path, tenant="acme", json={"pem": leaf.cert_pem.decode()})
    ).status == 400
    pem_body = await api.request(
        "POST",
        path,
        tenant="acme",
        data=leaf.cert_pem,
        headers={"Content-Type": "application/x-pem-file"},
    )
    assert pem_body.status == 400  # a PEM body carries no proof
    ok = await api.request(
        "POST",
        path,
        tenant="acme",
        json={"pem": leaf.cert_pem.decode(), "proof": await _signed(api, "acme", leaf.key)},
    )
    assert ok.status == 201 and ok.body["self_signed"] is True
    # Provisioning with the CSR form of the proof.
    other = devcerts.issue(None, "self-signed-2")
    csr = csr_with_challenge(other.key, await _challenge(api, "acme")).decode()
    created = await api.request(
        "POST",
        D,
        tenant="acme",
        json={
            "hardware_id": "hw-ss-2",
            "credential_kind": "x509",
            "cert_pem": other.cert_pem.decode(),
            "proof": {"csr_pem": csr},
        },
    )
    assert created.status == 201 and created.body["fingerprint"] == other.fingerprint
    # A proof only goes with a certificate.
    reply = await api.request(
        "POST",
        D,
        tenant="acme",
        json={"hardware_id": "h", "credential_kind": "psk", "proof": {"csr_pem": csr}},
    )
    assert reply.status == 400


async def test_another_tenants_certificate_answers_like_an_unknown_one(api: Api) -> None:
    """§4 existence oracle, certificates: globex provisioning (or registering) acme's
    registered certificate gets exactly the answer of a certificate nobody registered."""
    ca = devcerts.make_ca("acme CA")
    await api.add_ca("acme", ca)
    registered, unknown = devcerts.issue(ca, "registered"), devcerts.issue(ca, "unknown")
    await api.provision("acme", "hw-r", "x509", cert_pem=registered.cert_pem.decode())
    await api.add_ca("globex", devcerts.make_ca("globex CA"))
    theirs = await api.provision("globex", "hw-g", "x509")
    answers = []
    for cert in (registered, unknown):
        body = {
            "hardware_id": "hw-x",
            "credential_kind": "x509",
            "cert_pem": cert.cert_pem.decode(),
        }
        provision = await api.request("POST", D, tenant="globex", json=body)
        register = await api.request(
            "POST",
            f"{D}/{theirs['device_id']}/certs",
            tenant="globex",
            json={"pem": cert.cert_pem.decode()},
        )
        answers.append([(r.status, r.body) for r in (provision, register)])
    assert answers[0] == answers[1]
    assert answers[0][0][0] == 412
    assert (await api.request("GET", f"{D}?hardware_id=hw-x", tenant="globex")).body[
        "devices"
    ] == []


async def test_another_tenants_psk_identity_answers_like_a_free_one(api: Api) -> None:
    """§4 existence oracle, PSK identities: an identity outside the caller's namespace is
    refused the same whether another tenant uses it or not; inside it, the answer only ever
    concerns the caller's own devices."""
    mine = await api.provision("acme", "hw-p", "psk", psk_identity="acme:lamp-7")
    assert mine["psk_identity"] == "acme:lamp-7"
    theirs = await api.provision("globex", "hw-q", "psk")
    assert theirs["psk_identity"].startswith("globex:")
    rotate = f"{D}/{theirs['device_id']}/psk/rotate"
    answers = []
    for identity in ("acme:lamp-7", "acme:lamp-free"):
        rotated = await api.request(
            "POST", rotate, tenant="globex", json={"psk_identity": identity}
        )
        provision = await api.request(
            "POST",
            D,
            tenant="globex",
            json={"hardware_id": "hw-r", "credential_kind": "psk", "psk_identity": identity},
        )
        answers.append([(r.status, r.body) for r in (rotated, provision)])
    assert answers[0] == answers[1] and answers[0][0][0] == 400
    assert "globex:" in answers[0][0][1]["error"]["message"]
    # In its own namespace: 200, and the device works with it.
    ok = await api.request("POST", rotate, tenant="globex", json={"psk_identity": "globex:lamp-7"})
    assert ok.status == 200 and ok.body["psk_identity"] == "globex:lamp-7"


async def test_challenges_past_the_tenants_cap_are_429_with_retry_after(
    api: Api, monkeypatch: Any
) -> None:
    from corem_ingress.store.registry import proofs

    monkeypatch.setattr(proofs, "MAX_OUTSTANDING_CHALLENGES", 2)
    await _challenge(api, "acme")
    await _challenge(api, "acme")
    reply = await api.request("POST", "/api/v1/challenges", tenant="acme")
    assert reply.status == 429 and reply.body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert 290 <= int(reply.headers["Retry-After"]) <= 300
    await _challenge(api, "globex")  # another tenant's are not counted
