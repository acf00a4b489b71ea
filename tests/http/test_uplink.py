"""Device uplink: each header, identity from the key only, 401s that say nothing, the
overlap window, bad bodies. Real aiohttp client, real node, real redis-server."""

from __future__ import annotations

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
