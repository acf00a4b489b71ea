"""Device uplink: each header, identity from the key only, 401s that say nothing, the
overlap window, bad bodies. Real aiohttp client, real node, real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from corem_ingress.store.keys import KeySchema

from .conftest import Api

UNAUTH = {"error": {"code": "UNAUTHENTICATED", "message": "invalid or missing credential"}}


async def stored(redis: aioredis.Redis, tenant: str) -> list[dict[str, str]]:
    entries = await redis.xrange(KeySchema("corem").uplink_stream(tenant))
    return [fields for _id, fields in entries]


async def test_uplink_with_each_header_is_stored_then_acknowledged(
    api: Api, redis: aioredis.Redis, clock: Any
) -> None:
    dev = await api.provision("acme", "hw-1")
    key, device_id = dev["api_key"], dev["device_id"]
    ids = []
    for header, body in [
        ("x-api-key", {"kind": "telemetry", "payload": {"temp": 21.5}}),
        ("bearer", {"kind": "event", "payload": "door opened"}),
    ]:
        reply = await api.uplink(device_id, key, header=header, body=body)
        assert reply.status == 202
        ids.append(reply.body["message_id"])
        assert reply.body["received_at"] == clock.now
    # Both headers carrying the same key is fine too.
    both = await api.uplink(
        device_id,
        None,
        headers={"Authorization": f"bearer {key}", "X-API-Key": key},
        body={"kind": "state", "payload": [1, None, True]},
    )
    assert both.status == 202
    ids.append(both.body["message_id"])

    entries = await stored(redis, "acme")
    assert [e["message_id"] for e in entries] == ids
    first = entries[0]
    assert first["tenant_id"] == "acme"
    assert first["device_id"] == device_id
    assert first["transport"] == "http"
    assert first["kind"] == "telemetry"
    assert json.loads(first["payload"]) == {"temp": 21.5}
    assert float(first["received_at"]) == clock.now
    assert json.loads(entries[1]["payload"]) == "door opened"
    assert [e["kind"] for e in entries] == ["telemetry", "event", "state"]


async def test_key_of_another_device_is_403_and_nothing_is_written(
    api: Api, redis: aioredis.Redis
) -> None:
    a = await api.provision("acme", "hw-a")
    b = await api.provision("acme", "hw-b")
    other_tenant = await api.provision("globex", "hw-a")
    for target in (b["device_id"], other_tenant["device_id"], "not-a-uuid"):
        for header in ("x-api-key", "bearer"):
            reply = await api.uplink(target, a["api_key"], header=header)
            assert reply.status == 403
            assert reply.error_code == "PERMISSION_DENIED"
    assert await stored(redis, "acme") == []
    assert await stored(redis, "globex") == []


async def test_every_authentication_failure_is_the_same_401(api: Api) -> None:
    dev = await api.provision("acme", "hw-1")
    device_id, key = dev["device_id"], dev["api_key"]
    revoked = (await api.request("POST", f"/api/v1/devices/{device_id}/keys", tenant="acme")).body
    assert (
        await api.request(
            "DELETE", f"/api/v1/devices/{device_id}/keys/{revoked['key_id']}", tenant="acme"
        )
    ).status == 200
    unknown = "sk_live_" + "A" * 43
    cases: list[dict[str, str]] = [
        {},  # missing
        {"X-API-Key": "not-a-key"},  # malformed
        {"Authorization": "Basic dXNlcjpwYXNz"},  # another scheme
        {"Authorization": "Bearer"},  # empty
        {"Authorization": f"Bearer {key[:-1]}"},  # truncated
        {"X-API-Key": unknown},  # well-formed, unknown
        {"Authorization": f"Bearer {revoked['api_key']}"},  # revoked
        {"X-API-Key": revoked["api_key"]},
    ]
    for headers in cases:
        reply = await api.uplink(device_id, None, headers=headers)
        assert reply.status == 401, headers
        assert reply.body == UNAUTH
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="corem-device"'
    assert (await api.uplink(device_id, key)).status == 202


async def test_both_headers_with_different_keys_is_400(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-1")
    second = (
        await api.request("POST", f"/api/v1/devices/{dev['device_id']}/keys", tenant="acme")
    ).body
    reply = await api.uplink(
        dev["device_id"],
        None,
        headers={"Authorization": f"Bearer {dev['api_key']}", "X-API-Key": second["api_key"]},
    )
    assert reply.status == 400
    assert reply.error_code == "INVALID_ARGUMENT"
    # Two of the same header is as ambiguous.
    async with api.session.post(
        f"{api.base}/api/v1/devices/{dev['device_id']}/uplink",
        headers=[("X-API-Key", dev["api_key"]), ("X-API-Key", second["api_key"])],
        json={"kind": "telemetry", "payload": 1},
    ) as resp:
        assert resp.status == 400
    assert await stored(redis, "acme") == []


async def test_rotated_key_works_inside_the_overlap_window_only(api: Api, clock: Any) -> None:
    dev = await api.provision("acme", "hw-1")
    device_id, old = dev["device_id"], dev["api_key"]
    detail = (await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")).body
    (old_id,) = [c["key_id"] for c in detail["credentials"]]
    assert (await api.uplink(device_id, old)).status == 202  # cache warm with the old key
    rotated = await api.request(
        "POST",
        f"/api/v1/devices/{device_id}/keys/{old_id}/rotate",
        tenant="acme",
        json={"overlap_s": 120},
    )
    assert rotated.status == 200
    new = rotated.body["api_key"]
    assert rotated.body["replaces"] == old_id
    assert rotated.body["old_key_expires_at"] == pytest.approx(clock.now + 120)
    # Inside the window: both keys work, through either header.
    clock.advance(119)
    assert (await api.uplink(device_id, old, header="bearer")).status == 202
    assert (await api.uplink(device_id, new)).status == 202
    # After it: the old key is refused like any unknown key, the new one works.
    clock.advance(2)
    for header in ("bearer", "x-api-key"):
        reply = await api.uplink(device_id, old, header=header)
        assert reply.status == 401
        assert reply.body == UNAUTH
    assert (await api.uplink(device_id, new, header="bearer")).status == 202
    detail = (await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")).body
    status = {c["key_id"]: c["status"] for c in detail["credentials"]}
    assert status[old_id] == "expired"


async def test_rotation_without_overlap_stops_the_old_key_at_once(api: Api) -> None:
    dev = await api.provision("acme", "hw-1")
    device_id, old = dev["device_id"], dev["api_key"]
    assert (await api.uplink(device_id, old)).status == 202
    detail = (await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")).body
    key_id = detail["credentials"][0]["key_id"]
    rotated = await api.request(
        "POST",
        f"/api/v1/devices/{device_id}/keys/{key_id}/rotate",
        tenant="acme",
        json={"overlap_s": 0},
    )
    assert rotated.status == 200
    assert rotated.body["old_key_expires_at"] is None
    assert (await api.uplink(device_id, old)).status == 401
    assert (await api.uplink(device_id, rotated.body["api_key"])).status == 202
    # Beyond the configured maximum: refused, nothing rotated.
    too_long = await api.request(
        "POST",
        f"/api/v1/devices/{device_id}/keys/{rotated.body['key_id']}/rotate",
        tenant="acme",
        json={"overlap_s": 10**9},
    )
    assert too_long.status == 400
    assert (await api.uplink(device_id, rotated.body["api_key"])).status == 202


async def test_revoked_key_fails_on_the_next_request(api: Api) -> None:
    dev = await api.provision("acme", "hw-1")
    device_id, key = dev["device_id"], dev["api_key"]
    assert (await api.uplink(device_id, key)).status == 202  # now cached in the resolver
    revoked = await api.request(
        "DELETE", f"/api/v1/devices/{device_id}/keys/{dev['key_id']}", tenant="acme"
    )
    assert revoked.status == 200
    assert revoked.body["status"] == "revoked"
    # The bus evicts the cached key; a bounded wait for the event to arrive, no timing assertion.
    for _ in range(200):
        reply = await api.uplink(device_id, key)
        if reply.status == 401:
            break
    assert reply.status == 401
    assert reply.body == UNAUTH


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "INVALID_ARGUMENT"),
    (b"{not json", "INVALID_ARGUMENT"),
    (b"[1, 2]", "INVALID_ARGUMENT"),
    (b'"telemetry"', "INVALID_ARGUMENT"),
    (b'{"kind": "telemetry"}', "INVALID_ARGUMENT"),
    (b'{"payload": 1}', "INVALID_ARGUMENT"),
    (b'{"kind": "alarm", "payload": 1}', "INVALID_ARGUMENT"),
    (b'{"kind": 7, "payload": 1}', "INVALID_ARGUMENT"),
    (b'{"kind": null, "payload": 1}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": 1, "device_id": "x"}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": NaN}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": Infinity}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": 1e999999}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": "\xff\xfe"}', "INVALID_ARGUMENT"),
    (
        b'{"kind": "event", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "PAYLOAD_TOO_LARGE",
    ),
    (b'{"kind": "event", "payload": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": ' + b"[" * 900 + b"]" * 900 + b"}", "INVALID_ARGUMENT"),
    (
        b'{"kind": "event", "payload": ' + b'{"a":' * 64 + b"1" + b"}" * 64 + b"}",
        "INVALID_ARGUMENT",
    ),
    (b'{"kind": "event", "payload": ' + b"9" * 5000 + b"}", "INVALID_ARGUMENT"),
    # Issue 12 §4: a lone surrogate was stored (202) and broke every JSON consumer.
    (b'{"kind": "event", "payload": "\\ud800"}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": {"\\udfff": 1}}', "INVALID_ARGUMENT"),
    (b'{"kind": "event", "payload": 1e999}', "INVALID_ARGUMENT"),
]


async def test_bad_bodies_are_400_or_413_never_500(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-1")
    for body, code in BAD_BODIES:
        reply = await api.uplink(
            dev["device_id"],
            dev["api_key"],
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert reply.status == (413 if code == "PAYLOAD_TOO_LARGE" else 400), body[:60]
        assert reply.error_code == code
    assert await stored(redis, "acme") == []


async def test_body_limit_declared_and_chunked(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-1")
    limit = 64 * 1024
    padding = limit - len(b'{"kind":"event","payload":""}')
    exact = b'{"kind":"event","payload":"' + b"x" * padding + b'"}'
    assert len(exact) == limit
    ok = await api.uplink(dev["device_id"], dev["api_key"], data=exact)
    assert ok.status == 202
    over = exact[:-2] + b'x"}'
    reply = await api.uplink(dev["device_id"], dev["api_key"], data=over)
    assert reply.status == 413
    assert reply.error_code == "PAYLOAD_TOO_LARGE"

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(over), 4096):
            yield over[i : i + 4096]

    reply = await api.uplink(dev["device_id"], dev["api_key"], data=chunks())
    assert reply.status == 413
    assert len(await stored(redis, "acme")) == 1


async def test_payload_values_are_kept_as_sent(api: Api, redis: aioredis.Redis) -> None:
    dev = await api.provision("acme", "hw-1")
    payloads: list[Any] = ["text", 0, -1.5, True, None, [], {}, {"nested": {"a": [1, "b"]}}, "é✓"]
    for p in payloads:
        reply = await api.uplink(
            dev["device_id"], dev["api_key"], body={"kind": "state", "payload": p}
        )
        assert reply.status == 202
    assert [json.loads(e["payload"]) for e in await stored(redis, "acme")] == payloads


async def test_unknown_routes_and_methods_are_json_errors(api: Api) -> None:
    for method, path, status in [
        ("GET", "/nope", 404),
        ("GET", "/api/v1/devices/x/uplink", 405),
        ("PUT", "/api/v1/devices/x/uplink", 405),
    ]:
        async with api.session.request(method, api.base + path) as resp:
            assert resp.status == status
            body = await resp.json()
            assert set(body["error"]) == {"code", "message"}
            if status == 405:
                assert "POST" in resp.headers["Allow"]


async def test_openapi_document_is_served(api: Api) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{api.base}/api/v1/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")


async def test_no_key_or_token_reaches_the_log(api: Api, capfd: pytest.CaptureFixture[str]) -> None:
    dev = await api.provision("acme", "hw-1")
    key = dev["api_key"]
    unknown = "sk_live_" + "B" * 42 + "A"
    await api.uplink(dev["device_id"], key)
    await api.uplink(dev["device_id"], unknown)
    await api.uplink(dev["device_id"], key, headers={"Authorization": f"Bearer {unknown}"})
    await api.uplink(dev["device_id"], key, data=b"{bad")
    await api.request("GET", "/api/v1/devices", headers={"Authorization": "Bearer wrong-token"})
    await api.request("GET", "/api/v1/devices", tenant="acme")
    await api.uplink(unknown, unknown)  # a key in the path too
    out, err = capfd.readouterr()
    logged = out + err
    assert "http.unauthenticated" in logged  # the log did get the refusals...
    for secret in (key, key[8:], unknown[8:], api.tokens["acme"], "wrong-token"):
        assert secret not in logged  # ...but never a secret


async def test_malformed_http_is_refused_without_logging_its_bytes(
    api: Api, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    dev = await api.provision("acme", "hw-1")
    key = dev["api_key"]
    port = int(api.base.rsplit(":", 1)[1])
    requests = [
        f"POST /api/v1/devices/{dev['device_id']}/uplink HTTP/1.1\r\nHost: x\r\n"
        f"X-API-Key: {key}\r\nContent-Length: {key}\r\n\r\n",
        f"{key} / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    caplog.set_level("DEBUG")
    for raw in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw.encode())
        await writer.drain()
        head = await reader.readline()
        assert head.startswith(b"HTTP/1.") and b" 400 " in head
        await reader.read()  # aiohttp closes the connection after such a reply
        writer.close()
        await writer.wait_closed()
    logged = caplog.text + "".join(capfd.readouterr())
    assert key not in logged and key[8:] not in logged
    assert "http.malformed_request" in caplog.text
    # The listener is still fine.
    assert (await api.uplink(dev["device_id"], key)).status == 202


async def test_query_parameters_on_the_uplink_are_400_before_any_key_work(
    api: Api, redis: aioredis.Redis
) -> None:
    """The strict query check (the one middleware, before the handler) on the device route:
    it lists no parameter, so any named one is refused with its name, even without a key;
    a bare '?' names none and is accepted."""
    dev = await api.provision("acme", "hw-query")
    key, device_id = dev["api_key"], dev["device_id"]
    path = f"/api/v1/devices/{device_id}/uplink"
    body = {"kind": "telemetry", "payload": 1}
    for query, headers in [("?x=1", {"X-API-Key": key}), ("?b=1&a=2", {}), ("?x=1&x=2", {})]:
        reply = await api.request("POST", path + query, headers=headers, json=body, admin=False)
        assert reply.status == 400, query
        assert reply.body["error"]["code"] == "INVALID_ARGUMENT"
        names = sorted({p.split("=")[0] for p in query[1:].split("&")})
        shown = ", ".join(repr(n) for n in names)
        assert reply.body["error"]["message"] == f"unknown query parameter(s): {shown}"
    assert await stored(redis, "acme") == []
    reply = await api.request(
        "POST", path + "?", headers={"X-API-Key": key}, json=body, admin=False
    )
    assert reply.status == 202
    assert len(await stored(redis, "acme")) == 1
