"""The operator admin API: provisioning, keys, PSKs, certificates, tenant isolation on
every route, audit records, operator-token failures. Real client, node and redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.adapters import http
from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.store.keys import KeySchema

from .conftest import Api

D = "/api/v1/devices"


async def audit(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [f for _id, f in await redis.xrange(KeySchema("corem").audit_stream)]


async def test_provision_is_idempotent_and_shows_the_key_once(
    api: Api, redis: aioredis.Redis
) -> None:
    first = await api.request(
        "POST", D, tenant="acme", json={"hardware_id": "hw-1", "credential_kind": "api_key"}
    )
    assert first.status == 201
    body = first.body
    assert body["created"] is True and body["api_key"].startswith("sk_live_")
    assert first.headers["Location"] == f"{D}/{body['device_id']}"
    assert first.headers["Cache-Control"] == "no-store"
    again = await api.request(
        "POST", D, tenant="acme", json={"hardware_id": "hw-1", "credential_kind": "api_key"}
    )
    assert again.status == 200
    assert again.body["device_id"] == body["device_id"]
    assert again.body["created"] is False and "api_key" not in again.body

    got = await api.request("GET", f"{D}/{body['device_id']}", tenant="acme")
    assert got.status == 200
    assert got.body["hardware_id"] == "hw-1" and got.body["tenant_id"] == "acme"
    assert [c["status"] for c in got.body["credentials"]] == ["active"]
    assert "api_key" not in json.dumps(got.body).replace('"api_key"', "")  # only the kind name

    found = await api.request("GET", f"{D}?hardware_id=hw-1", tenant="acme")
    assert [d["device_id"] for d in found.body["devices"]] == [body["device_id"]]
    none = await api.request("GET", f"{D}?hardware_id=hw-404", tenant="acme")
    assert none.status == 200 and none.body == {"devices": [], "next_cursor": None}

    # Pagination over the tenant's devices.
    for i in range(2, 5):
        await api.provision("acme", f"hw-{i}")
    seen, cursor = [], None
    for _ in range(10):
        q = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = await api.request("GET", D + q, tenant="acme")
        seen += [d["hardware_id"] for d in page.body["devices"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["hw-1", "hw-2", "hw-3", "hw-4"]

    records = await audit(redis)
    provisions = [r for r in records if r["action"] == "devices.provision"]
    assert {r["actor"] for r in provisions} == {"admin:ops-acme"}
    assert all(r["tenant_id"] == "acme" and r["outcome"] == "OK" for r in provisions)
    assert {"devices.get", "devices.find", "devices.list"} <= {r["action"] for r in records}
    assert "sk_live_" not in json.dumps(records)


async def test_api_key_create_rotate_revoke(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-1")
    device_id = dev["device_id"]
    created = await api.request("POST", f"{D}/{device_id}/keys", tenant="acme")
    assert created.status == 201
    assert created.body["device_id"] == device_id
    assert (await api.uplink(device_id, created.body["api_key"])).status == 202
    rotated = await api.request(
        "POST", f"{D}/{device_id}/keys/{created.body['key_id']}/rotate", tenant="acme"
    )
    assert rotated.status == 200  # no body: the configured default overlap
    assert rotated.body["replaces"] == created.body["key_id"]
    assert rotated.body["old_key_expires_at"] is not None
    # A rotated key cannot be rotated again; bad overlap values are 400.
    again = await api.request(
        "POST", f"{D}/{device_id}/keys/{created.body['key_id']}/rotate", tenant="acme"
    )
    assert again.status == 412
    for bad in ({"overlap_s": -1}, {"overlap_s": "60"}, {"overlap_s": True}, {"other": 1}, [1]):
        reply = await api.request(
            "POST", f"{D}/{device_id}/keys/{rotated.body['key_id']}/rotate", tenant="acme", json=bad
        )
        assert reply.status == 400, bad
    revoked = await api.request(
        "DELETE", f"{D}/{device_id}/keys/{rotated.body['key_id']}", tenant="acme"
    )
    assert revoked.status == 200 and revoked.body["status"] == "revoked"
    twice = await api.request(
        "DELETE", f"{D}/{device_id}/keys/{rotated.body['key_id']}", tenant="acme"
    )
    assert twice.status == 200 and twice.body["status"] == "revoked"
    missing = await api.request(
        "DELETE", f"{D}/{device_id}/keys/key_0000000000000000", tenant="acme"
    )
    assert missing.status == 404
    odd = await api.request("DELETE", f"{D}/{device_id}/keys/not-a-key-id", tenant="acme")
    assert odd.status == 404
    actions = [r["action"] for r in await audit(redis)]
    assert {"keys.create", "keys.rotate", "keys.revoke"} <= set(actions)


async def test_psk_provision_rotate_revoke(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-psk", "psk")
    assert len(bytes.fromhex(dev["psk"])) >= 32 and dev["psk_identity"]
    device_id = dev["device_id"]
    given = "2ccb2ebd0ee4261b68e62446b43c459fbb0b282ffa69e4f1b3f9b60dd30289fa"
    rotated = await api.request(
        "POST",
        f"{D}/{device_id}/psk/rotate",
        tenant="acme",
        json={"psk_identity": "acme:hw-psk-2", "psk_hex": given},
    )
    assert rotated.status == 200
    assert rotated.body["psk_identity"] == "acme:hw-psk-2" and rotated.body["psk"] == given
    generated = await api.request("POST", f"{D}/{device_id}/psk/rotate", tenant="acme")
    assert generated.status == 200 and generated.body["psk"] != given
    for bad in (
        {"psk_hex": "zz"},
        {"psk_hex": "ab" * 8},
        {"psk_identity": 5},
        {"x": 1},
        {"psk_hex": "00" * 32},  # issue 12 §4: trivially low entropy
        {"psk_hex": "deadbeef" * 8},
    ):
        assert (
            await api.request("POST", f"{D}/{device_id}/psk/rotate", tenant="acme", json=bad)
        ).status == 400
    revoked = await api.request("DELETE", f"{D}/{device_id}/psk", tenant="acme")
    assert revoked.status == 200 and revoked.body["status"] == "revoked"
    assert (await api.request("DELETE", f"{D}/{device_id}/psk", tenant="acme")).status == 404
    # PSK operations on an API-key device: a precondition, not a crash.
    key_dev = await api.provision("acme", "hw-key")
    reply = await api.request("POST", f"{D}/{key_dev['device_id']}/psk/rotate", tenant="acme")
    assert reply.status == 412
    # Provisioning with a taken PSK identity is a conflict.
    taken = await api.request(
        "POST",
        D,
        tenant="acme",
        json={"hardware_id": "hw-psk-3", "credential_kind": "psk", "psk_identity": "acme:hw-psk-2"},
    )
    assert taken.status == 201  # the rotated-away identity is free again
    dup = await api.request(
        "POST",
        D,
        tenant="acme",
        json={"hardware_id": "hw-psk-4", "credential_kind": "psk", "psk_identity": "acme:hw-psk-2"},
    )
    assert dup.status == 409
    records = await audit(redis)
    text = json.dumps(records)
    assert given not in text and dev["psk"] not in text
    assert {"psk.rotate", "psk.revoke"} <= {r["action"] for r in records}


async def test_certificates_register_list_revoke(api: Api, redis: aioredis.Redis) -> None:
    ca = devcerts.make_ca()
    await api.add_ca("acme", ca)
    c1, c2, c3 = (devcerts.issue(ca, f"dev-{i}") for i in range(3))
    dev = await api.provision("acme", "hw-x", "x509")
    device_id = dev["device_id"]
    pem_body = await api.request(
        "POST",
        f"{D}/{device_id}/certs",
        tenant="acme",
        data=c1.cert_pem,
        headers={"Content-Type": "application/x-pem-file"},
    )
    assert pem_body.status == 201 and pem_body.body["fingerprint"] == c1.fingerprint
    as_json = await api.request(
        "POST", f"{D}/{device_id}/certs", tenant="acme", json={"pem": c2.cert_pem.decode()}
    )
    assert as_json.status == 201 and as_json.body["fingerprint"] == c2.fingerprint
    text_plain = await api.request(
        "POST", f"{D}/{device_id}/certs", tenant="acme", data=c3.cert_pem
    )
    assert text_plain.status == 201
    dup = await api.request(
        "POST", f"{D}/{device_id}/certs", tenant="acme", json={"pem": c1.cert_pem.decode()}
    )
    assert dup.status == 409
    for bad in (
        {"json": {"pem": "not a pem"}},
        {"json": {"pem": c1.key_pem.decode()}},  # a private key: refused, never stored
        {"json": {"cert": c1.cert_pem.decode()}},
        {"data": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}},
        {"data": b"", "headers": {"Content-Type": "text/plain"}},
        {"json": {"pem": ca.cert_pem.decode()}},  # a CA cannot be a device
    ):
        reply = await api.request("POST", f"{D}/{device_id}/certs", tenant="acme", **bad)
        assert reply.status == 400, bad
    form = await api.request(
        "POST", f"{D}/{device_id}/certs", tenant="acme", data={"pem": c1.cert_pem.decode()}
    )
    assert form.status == 415

    page1 = await api.request("GET", f"{D}/certs?limit=2", tenant="acme")
    assert len(page1.body["certs"]) == 2 and page1.body["next_cursor"]
    page2 = await api.request(
        "GET", f"{D}/certs?limit=2&cursor={page1.body['next_cursor']}", tenant="acme"
    )
    assert len(page2.body["certs"]) == 1 and page2.body["next_cursor"] is None
    by_device = await api.request("GET", f"{D}/certs?device_id={device_id}", tenant="acme")
    assert {c["fingerprint"] for c in by_device.body["certs"]} == {
        c1.fingerprint,
        c2.fingerprint,
        c3.fingerprint,
    }
    revoked = await api.request("DELETE", f"{D}/certs/{c1.fingerprint}", tenant="acme")
    assert revoked.status == 200 and revoked.body["status"] == "revoked"
    assert (await api.request("DELETE", f"{D}/certs/{c1.fingerprint}", tenant="acme")).status == 200
    assert (await api.request("DELETE", f"{D}/certs/{'0' * 64}", tenant="acme")).status == 404
    assert (await api.request("DELETE", f"{D}/certs/NOT-HEX", tenant="acme")).status == 404
    # A certificate for a device of another credential kind: precondition failed.
    key_dev = await api.provision("acme", "hw-key")
    wrong = await api.request(
        "POST",
        f"{D}/{key_dev['device_id']}/certs",
        tenant="acme",
        json={"pem": c1.cert_pem.decode()},
    )
    assert wrong.status in (409, 412)
    records = await audit(redis)
    assert {"certs.register", "certs.revoke", "certs.list"} <= {r["action"] for r in records}
    assert "PRIVATE KEY" not in json.dumps(records)


async def test_tenant_isolation_on_every_admin_route(api: Api) -> None:
    ca = devcerts.make_ca()
    acme_ca = await api.add_ca("acme", ca)
    cert = devcerts.issue(ca, "iso")
    key_dev = await api.provision("acme", "hw-key")
    psk_dev = await api.provision("acme", "hw-psk", "psk")
    x_dev = await api.provision("acme", "hw-x509", "x509", cert_pem=cert.cert_pem.decode())
    k, p, x = key_dev["device_id"], psk_dev["device_id"], x_dev["device_id"]
    key_id = key_dev["key_id"]
    other = devcerts.issue(ca, "other")

    not_found: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"{D}/{k}", {}),
        ("POST", f"{D}/{k}/keys", {}),
        ("POST", f"{D}/{k}/keys/{key_id}/rotate", {"json": {"overlap_s": 0}}),
        ("DELETE", f"{D}/{k}/keys/{key_id}", {}),
        ("POST", f"{D}/{p}/psk/rotate", {}),
        ("DELETE", f"{D}/{p}/psk", {}),
        ("POST", f"{D}/{x}/certs", {"json": {"pem": other.cert_pem.decode()}}),
        ("DELETE", f"{D}/certs/{cert.fingerprint}", {}),
        ("GET", f"{D}/certs?device_id={x}", {}),
        ("DELETE", f"/api/v1/cas/{ca.fingerprint}", {}),
    ]
    for method, path, kwargs in not_found:
        reply = await api.request(method, path, tenant="globex", **kwargs)
        assert reply.status == 404, (method, path, reply.body)
        assert reply.error_code == "NOT_FOUND"
    # Lists and look-ups only ever show the caller's tenant.
    assert (await api.request("GET", f"{D}?hardware_id=hw-key", tenant="globex")).body[
        "devices"
    ] == []
    assert (await api.request("GET", D, tenant="globex")).body["devices"] == []
    assert (await api.request("GET", f"{D}/certs", tenant="globex")).body["certs"] == []
    assert (await api.request("GET", "/api/v1/cas", tenant="globex")).body["cas"] == []
    # The same hardware id in another tenant is another device.
    theirs = await api.provision("globex", "hw-key")
    assert theirs["created"] is True and theirs["device_id"] != k

    # Nothing of acme's changed.
    assert (await api.uplink(k, key_dev["api_key"])).status == 202
    detail = (await api.request("GET", f"{D}/{p}", tenant="acme")).body
    assert [c["status"] for c in detail["credentials"]] == ["active"]
    certs = (await api.request("GET", f"{D}/certs?device_id={x}", tenant="acme")).body["certs"]
    assert [c["fingerprint"] for c in certs] == [cert.fingerprint]
    assert certs[0]["status"] == "active"
    cas = (await api.request("GET", "/api/v1/cas", tenant="acme")).body["cas"]
    assert cas == [acme_ca.body]


async def test_operator_token_failures_are_401(api: Api) -> None:
    dev = await api.provision("acme", "hw-1")
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer " + generate_token()},
        {"Authorization": f"Bearer {dev['api_key']}"},  # a device key is no operator token
        {"Authorization": f"Basic {api.tokens['acme']}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": api.tokens["acme"]},
    ]
    for headers in bad_headers:
        for method, path in [("GET", D), ("GET", f"{D}/{dev['device_id']}"), ("POST", D)]:
            reply = await api.request(method, path, headers=headers)
            assert reply.status == 401, (headers, path)
            assert reply.body["error"]["code"] == "UNAUTHENTICATED"
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="corem-admin"'
    # An operator token is no device key either.
    reply = await api.uplink(dev["device_id"], api.tokens["acme"], header="bearer")
    assert reply.status == 401


async def test_bad_admin_requests_are_400(api: Api) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", D, {"data": b"{", "headers": {"Content-Type": "application/json"}}),
        ("POST", D, {"json": []}),
        ("POST", D, {"json": {"hardware_id": "hw-1"}}),
        ("POST", D, {"json": {"hardware_id": "hw 1", "credential_kind": "api_key"}}),
        ("POST", D, {"json": {"hardware_id": "hw-1", "credential_kind": "password"}}),
        ("POST", D, {"json": {"hardware_id": 7, "credential_kind": "api_key"}}),
        ("POST", D, {"json": {"hardware_id": "h", "credential_kind": "api_key", "x": 1}}),
        ("POST", D, {"json": {"hardware_id": "h", "credential_kind": "api_key", "psk_hex": "00"}}),
        ("POST", D, {"json": {"hardware_id": "h", "credential_kind": "psk", "psk_hex": "0g"}}),
        ("POST", D, {"json": {"hardware_id": "h", "credential_kind": "psk", "psk_identity": ""}}),
        ("POST", D, {"json": {"hardware_id": "h\ud800", "credential_kind": "psk"}}),
        ("POST", D, {"json": {"hardware_id": "h", "credential_kind": "x509", "cert_pem": "x"}}),
        ("GET", f"{D}?limit=0", {}),
        ("GET", f"{D}?limit=501", {}),
        ("GET", f"{D}?limit=abc", {}),
        ("GET", f"{D}?cursor=%C2%B2", {}),  # a digit to str.isdigit, not to int()
        ("GET", f"{D}?cursor=-1", {}),
        ("GET", f"{D}?hardware_id=bad%20id", {}),
        ("GET", f"{D}/certs?limit=x", {}),
    ]
    for method, path, kwargs in cases:
        reply = await api.request(method, path, tenant="acme", **kwargs)
        assert reply.status == 400, (method, path, kwargs, reply.body)
        assert reply.error_code == "INVALID_ARGUMENT"
    big = await api.request(
        "POST",
        D,
        tenant="acme",
        json={"hardware_id": "h", "credential_kind": "x509", "cert_pem": "x" * 70_000},
    )
    assert big.status == 413


async def test_admin_api_on_its_own_listener(start_node: Any, operator_tokens: Any) -> None:
    path, tokens = operator_tokens
    node = await start_node(
        [http.build], http={"admin_tokens_file": str(path), "admin_mode": "separate"}
    )
    listener = node.listeners[0]
    assert listener.admin_port and listener.admin_port != listener.port
    async with aiohttp.ClientSession() as session:
        device_api = Api(session, f"http://127.0.0.1:{listener.port}", tokens)
        admin_api = Api(session, f"http://127.0.0.1:{listener.admin_port}", tokens)
        dev = await admin_api.provision("acme", "hw-1")
        assert (await device_api.uplink(dev["device_id"], dev["api_key"])).status == 202
        # Each listener serves only its own API (and the document).
        assert (await device_api.request("GET", D, tenant="acme")).status in (404, 405)
        assert (await admin_api.uplink(dev["device_id"], dev["api_key"])).status == 404
        for base in (device_api.base, admin_api.base):
            async with session.get(base + "/api/v1/openapi.json") as resp:
                assert resp.status == 200


async def test_admin_api_off_and_tokens_from_the_environment(
    start_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = generate_token()
    monkeypatch.setenv("COREM_HTTP_ADMIN_TOKENS", f"acme:{hash_token(token)}:env-op")
    on = await start_node([http.build])
    off = await start_node([http.build], http={"admin_mode": "off"})
    async with aiohttp.ClientSession() as session:
        api_on = Api(session, f"http://127.0.0.1:{on.listeners[0].port}", {"acme": token})
        dev = await api_on.provision("acme", "hw-env")
        api_off = Api(session, f"http://127.0.0.1:{off.listeners[0].port}", {"acme": token})
        assert (await api_off.request("GET", D, tenant="acme")).status == 404
        # The device API still works on the node without an admin API.
        assert (await api_off.uplink(dev["device_id"], dev["api_key"])).status == 202


def duplicate_extension_cert() -> str:
    """A parsable certificate whose extensions are not: BasicConstraints twice."""
    import base64
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dup")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    ski_oid, bc_oid = bytes.fromhex("0603551d0e"), bytes.fromhex("0603551d13")
    assert der.count(ski_oid) == 1
    der = der.replace(ski_oid, bc_oid)  # same length: still a well-formed certificate
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


async def test_certificate_with_unparsable_extensions_is_400(api: Api) -> None:
    pem = duplicate_extension_cert()
    dev = await api.provision("acme", "hw-x", "x509")
    reply = await api.request(
        "POST", f"{D}/{dev['device_id']}/certs", tenant="acme", json={"pem": pem}
    )
    assert reply.status == 400
    provision = await api.request(
        "POST",
        D,
        tenant="acme",
        json={"hardware_id": "hw-y", "credential_kind": "x509", "cert_pem": pem},
    )
    assert provision.status == 400


async def test_concurrent_provisioning_makes_one_device_and_one_secret(api: Api) -> None:
    replies = await asyncio.gather(
        *(
            api.request(
                "POST",
                D,
                tenant="acme",
                json={"hardware_id": "hw-race", "credential_kind": "api_key"},
            )
            for _ in range(12)
        )
    )
    assert sorted(r.status for r in replies) == [200] * 11 + [201]
    assert len({r.body["device_id"] for r in replies}) == 1
    assert sum("api_key" in r.body for r in replies) == 1
    listed = await api.request("GET", D, tenant="acme")
    assert [d["hardware_id"] for d in listed.body["devices"]] == ["hw-race"]


async def test_server_is_as_strict_as_its_openapi(api: Api) -> None:
    """Issue 12 §4 schema drift: null fields and an empty cursor were accepted (200/201)."""
    key_dev = await api.provision("acme", "hw-strict")
    psk_dev = await api.provision("acme", "hw-strict-psk", "psk")
    key_id = key_dev["key_id"]
    cases = [
        (f"{D}/{key_dev['device_id']}/keys/{key_id}/rotate", {"overlap_s": None}),
        (D, {"hardware_id": "hw-n1", "credential_kind": "x509", "cert_pem": None}),
        (D, {"hardware_id": "hw-n2", "credential_kind": "psk", "psk_identity": None}),
        (D, {"hardware_id": "hw-n3", "credential_kind": "psk", "psk_hex": None}),
        (f"{D}/{psk_dev['device_id']}/psk/rotate", {"psk_identity": None}),
        (f"{D}/{psk_dev['device_id']}/psk/rotate", {"psk_hex": None}),
    ]
    for path, body in cases:
        reply = await api.request("POST", path, tenant="acme", json=body)
        assert reply.status == 400, (path, body, reply.body)
        assert reply.error_code == "INVALID_ARGUMENT"
    for query in ("?cursor=", "?limit=", "?cursor=0&cursor=1", "?colour=blue", "?limit=1.5"):
        reply = await api.request("GET", D + query, tenant="acme")
        assert reply.status == 400, query
        reply = await api.request("GET", f"{D}/certs{query}", tenant="acme")
        assert reply.status == 400, query
    assert (await api.request("GET", D + "?cursor=0&limit=5", tenant="acme")).status == 200
