"""Redis stops for real (a private redis-server, not the shared one): every uplink is a
503 that the device may retry, and no 202 is ever given for a message that is not stored."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from corem_ingress.adapters import http
from corem_ingress.app import redis_client
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.store.keys import KeySchema

from .conftest import Api


async def test_redis_down_is_503_and_no_202_without_a_stored_message(
    durable_redis: EmbeddedRedis, start_node: Any, operator_tokens: Any
) -> None:
    tokens_path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        redis={"url": durable_redis.url},
        http={"admin_tokens_file": str(tokens_path)},
    )
    acked: list[str] = []
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)
        dev = await api.provision("acme", "hw-1")
        device_id, key = dev["device_id"], dev["api_key"]

        async def send(i: int) -> int:
            reply = await api.uplink(device_id, key, body={"kind": "telemetry", "payload": i})
            if reply.status == 202:
                acked.append(reply.body["message_id"])
            else:
                assert reply.status == 503, reply.body
                assert reply.error_code == "UNAVAILABLE"
                assert reply.headers["Retry-After"] == "1"
            return reply.status

        assert await send(0) == 202  # the key is now in the resolver's cache

        # Under load: Redis stops while 60 uplinks are in flight on 12 connections. Each
        # answer is 202 or 503 (send() checks it); which is which depends on timing, what
        # was answered 202 must be stored whatever the timing (checked at the end).
        async def burst() -> None:
            for i in range(5):
                await send(1000 + i)

        stopping = asyncio.create_task(asyncio.to_thread(durable_redis.stop))  # SIGTERM, wait
        await asyncio.gather(*(burst() for _ in range(12)), stopping)
        assert [await send(i) for i in range(1, 4)] == [503, 503, 503]
        admin = await api.request("GET", f"/api/v1/devices/{device_id}", tenant="acme")
        assert admin.status == 503

        restarted = EmbeddedRedis(
            port=durable_redis.port, data_dir=durable_redis.data_dir, persist=True
        ).start()
        durable_redis.proc = restarted.proc  # the fixture stops whichever process runs now
        # The device retries (bounded); every answer is 202 or 503, never anything else.
        statuses = []
        for i in range(4, 204):
            statuses.append(await send(i))
            if statuses[-1] == 202:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 202

    client = redis_client(durable_redis.url)
    try:
        entries = await client.xrange(KeySchema("corem").uplink_stream("acme"))
    finally:
        await client.aclose()
    stored_ids = [fields["message_id"] for _id, fields in entries]
    assert len(acked) >= 2
    assert set(acked) <= set(stored_ids)
