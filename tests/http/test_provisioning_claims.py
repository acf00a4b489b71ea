"""Provisioning by claim over HTTP: operators create claims (admin API, CLI); devices enrol
with them (``POST /api/v1/provisioning/claim``) with aiohttp and curl. Real node, real
redis-server; every answer checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
import redis.asyncio as aioredis

from corem_ingress.adapters import http
from corem_ingress.store.keys import KeySchema
from tests.http.conftest import Api

ENROL = "/api/v1/provisioning/claim"


async def create_claim(api: Api, tenant: str = "acme", **body: Any) -> dict[str, Any]:
    reply = await api.request("POST", "/api/v1/claims", tenant=tenant, json=body)
    assert reply.status == 201, reply.body
    return dict(reply.body)


async def enrol(api: Api, claim_key: str, hardware_id: str, *, header: str = "bearer") -> Any:
    headers = (
        {"Authorization": f"Bearer {claim_key}"} if header == "bearer" else {"X-API-Key": claim_key}
    )
    return await api.request(
        "POST", ENROL, headers=headers, admin=False, json={"hardware_id": hardware_id}
    )


async def audit(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [f for _id, f in await redis.xrange(KeySchema("corem").audit_stream)]


async def test_enrol_retry_first_use_then_refused(api: Api, redis: aioredis.Redis) -> None:
    claim = await create_claim(api, max_uses=5, expires_in_s=3600)
    assert claim["claim_key"].startswith("ck_live_") and claim["status"] == "active"

    first = await enrol(api, claim["claim_key"], "hw-1")
    assert first.status == 201 and first.body["created"] and not first.body["reissued"]
    assert first.body["credential_kind"] == "api_key"
    device_id = first.body["device_id"]

    # The reply was lost: the retry re-issues, the first key stops working.
    retry = await enrol(api, claim["claim_key"], "hw-1", header="x-api-key")
    assert retry.status == 200 and retry.body["reissued"] and not retry.body["created"]
    assert retry.body["device_id"] == device_id
    assert retry.body["api_key"] != first.body["api_key"]
    assert (await api.uplink(device_id, first.body["api_key"])).status == 401

    # First use of the new key, then a retry is refused and nothing changes.
    assert (await api.uplink(device_id, retry.body["api_key"])).status == 202
    late = await enrol(api, claim["claim_key"], "hw-1")
    assert late.status == 409 and late.error_code == "ALREADY_EXISTS"
    assert (await api.uplink(device_id, retry.body["api_key"])).status == 202

    # One use counted (re-issues are not); the device has one active credential.
    got = await api.request("GET", f"/api/v1/claims/{claim['claim_id']}", tenant="acme")
    assert got.body["uses"] == 1 and "claim_key" not in got.body
    detail = await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")
    statuses = sorted(c["status"] for c in detail.body["credentials"])
    assert statuses == ["active", "revoked"]

    records = [r for r in await audit(redis) if r["action"] == "claims.enrol"]
    assert [r["outcome"] for r in records] == ["OK", "OK", "ALREADY_EXISTS"]
    assert {r["actor"] for r in records} == {f"claim:{claim['claim_id']}"}
    assert all(r["target"] == "hardware_id=hw-1" for r in records)
    assert not any(claim["claim_key"] in json.dumps(r) for r in await audit(redis))


async def test_a_claim_can_do_nothing_else(api: Api) -> None:
    claim = await create_claim(api, max_uses=1)
    device = await api.provision("acme", "op-device")
    # Not an API key: no uplink, with the claim key, for any device.
    assert (await api.uplink(device["device_id"], claim["claim_key"])).status == 401
    # Not an operator token either.
    listed = await api.request(
        "GET", "/api/v1/devices", headers={"Authorization": f"Bearer {claim['claim_key']}"}
    )
    assert listed.status == 401
    # And a device's own API key cannot enrol.
    assert (await enrol(api, device["api_key"], "hw-x")).status == 401


async def test_uses_expiry_revocation_and_foreign_devices(api: Api, clock: Any) -> None:
    claim = await create_claim(api, max_uses=2, expires_in_s=600)
    key = claim["claim_key"]
    await api.provision("acme", "operator-made")
    refused = await enrol(api, key, "operator-made")  # not this claim's device
    assert refused.status == 409
    assert (await enrol(api, key, "a")).status == 201
    assert (await enrol(api, key, "b")).status == 201
    exhausted = await enrol(api, key, "c")
    assert exhausted.status == 403 and exhausted.error_code == "PERMISSION_DENIED"
    listed = await api.request("GET", "/api/v1/claims", tenant="acme")
    assert [c["status"] for c in listed.body["claims"]] == ["exhausted"]

    other = await create_claim(api, max_uses=5, expires_in_s=600)
    assert (await enrol(api, other["claim_key"], "a")).status == 409  # another claim's device
    revoked = await api.request("DELETE", f"/api/v1/claims/{other['claim_id']}", tenant="acme")
    assert revoked.status == 200 and revoked.body["status"] == "revoked"
    assert (await enrol(api, other["claim_key"], "d")).status == 401
    # Another tenant sees no claim of acme's.
    foreign = await api.request("DELETE", f"/api/v1/claims/{other['claim_id']}", tenant="globex")
    assert foreign.status == 404

    late = await create_claim(api, max_uses=5, expires_in_s=60)
    clock.advance(61)
    assert (await enrol(api, late["claim_key"], "e")).status == 401


async def test_bad_requests(api: Api) -> None:
    claim = await create_claim(api, max_uses=1)
    bad_hw = await enrol(api, claim["claim_key"], "not a hardware id")
    assert bad_hw.status == 400
    for body in ({"max_uses": 0}, {"max_uses": 1, "kind": "x509"}, {"max_uses": "1"}, {}):
        reply = await api.request("POST", "/api/v1/claims", tenant="acme", json=body)
        assert reply.status == 400, body
    assert (await enrol(api, "ck_live_short", "hw")).status == 401


async def test_psk_credentials_are_issued_once_and_retried(api: Api) -> None:
    claim = await create_claim(api, max_uses=3, credential_kind="psk")
    first = await enrol(api, claim["claim_key"], "psk-hw")
    assert first.status == 201 and len(bytes.fromhex(first.body["psk"])) >= 32
    assert first.body["psk_identity"].startswith("acme:psk-hw:")
    retry = await enrol(api, claim["claim_key"], "psk-hw")
    assert retry.status == 200 and retry.body["psk_identity"] != first.body["psk_identity"]


async def test_fifty_concurrent_enrolments_make_one_device_with_one_live_key(api: Api) -> None:
    claim = await create_claim(api, max_uses=1)
    replies = await asyncio.gather(*(enrol(api, claim["claim_key"], "race") for _ in range(50)))
    assert all(r.status in (200, 201) for r in replies), [r.body for r in replies]
    assert sum(r.status == 201 for r in replies) == 1
    devices = {r.body["device_id"] for r in replies}
    assert len(devices) == 1
    (device_id,) = devices
    found = await api.request("GET", "/api/v1/devices?hardware_id=race", tenant="acme")
    assert [d["device_id"] for d in found.body["devices"]] == [device_id]
    detail = await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")
    active = [c for c in detail.body["credentials"] if c["status"] == "active"]
    assert len(active) == 1
    working = [r for r in replies if r.body["key_id"] == active[0]["key_id"]]
    assert len(working) == 1
    assert (await api.uplink(device_id, working[0].body["api_key"])).status == 202


async def test_curl_enrols_a_device(api: Api) -> None:
    claim = await create_claim(api, max_uses=1)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {claim['claim_key']}",
            "-H",
            "Content-Type: application/json",
            "--data",
            '{"hardware_id": "curl-hw"}',
            api.base + ENROL,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "201"
    enrolled = json.loads(body)
    assert (await api.uplink(enrolled["device_id"], enrolled["api_key"])).status == 202


@pytest.fixture
async def limited_api(start_node, operator_tokens, clock):  # type: ignore[no-untyped-def]
    import aiohttp

    path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        clock=clock,
        http={"admin_tokens_file": str(path)},
        limits={"auth_fail_max": 0},
        provisioning={"claim_rate_per_minute": 3, "tenant_rate_per_minute": 5},
    )
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)


async def test_provisioning_rate_per_claim_and_tenant(limited_api: Api, redis: Any) -> None:
    api = limited_api
    one = await create_claim(api, max_uses=100)
    two = await create_claim(api, max_uses=100)
    statuses = [(await enrol(api, one["claim_key"], f"r{i}")).status for i in range(4)]
    assert statuses == [201, 201, 201, 429]
    last = api.seen[-1]
    assert last.error_code == "RESOURCE_EXHAUSTED" and int(last.headers["Retry-After"]) >= 1
    # The tenant's window holds 5: the other claim gets two more, then 429 too.
    statuses = [(await enrol(api, two["claim_key"], f"s{i}")).status for i in range(2)]
    assert statuses == [201, 429]
    outcomes = [r["outcome"] for r in await audit(redis) if r["action"] == "claims.enrol"]
    assert outcomes.count("RESOURCE_EXHAUSTED") == 2


async def test_auto_provision_admin_routes(api: Api) -> None:
    from corem_ingress import devcerts

    ca = devcerts.make_ca("jitp CA")
    added = await api.add_ca("acme", ca)
    fp = added.body["fingerprint"]
    path = f"/api/v1/cas/{fp}/auto-provision"
    off = await api.request("GET", path, tenant="acme")
    assert off.status == 200 and off.body == {
        "ca_fingerprint": fp,
        "auto_provision": False,
        "template": None,
    }
    template = {
        "hardware_id_from": "san_uri",
        "san_prefix": "urn:dev:",
        "metadata": {"model": "x1"},
        "allow_certificate_rotation": True,
    }
    on = await api.request("PUT", path, tenant="acme", json=template)
    assert on.status == 200 and on.body["auto_provision"] and on.body["template"] == template
    assert (await api.request("GET", path, tenant="acme")).body["template"] == template
    bad = await api.request("PUT", path, tenant="acme", json={"hardware_id_from": "mac"})
    assert bad.status == 400
    # Another tenant does not see acme's CA; the same CA cannot auto-provision for two.
    assert (await api.request("PUT", path, tenant="globex", json={})).status == 404
    await api.add_ca("globex", ca)
    clash = await api.request("PUT", path, tenant="globex", json={})
    assert clash.status == 409
    gone = await api.request("DELETE", path, tenant="acme")
    assert gone.status == 200 and not gone.body["auto_provision"]
    assert (await api.request("PUT", path, tenant="globex", json={})).status == 200
