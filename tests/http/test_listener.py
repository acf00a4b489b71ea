"""The listener's shutdown: stop accepting at once, let a request in flight (waiting for its
Redis append) finish and be acknowledged, within the deadline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from corem_ingress.core import api_keys
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.keys import KeySchema

from .conftest import Api


async def test_stop_finishes_the_request_in_flight_and_refuses_new_ones(
    api: Api, http_node: Any, redis: aioredis.Redis
) -> None:
    dev = await api.provision("acme", "hw-1")
    listener = http_node.listeners[0]
    port = listener.port
    body = json.dumps({"kind": "event", "payload": "in flight"}).encode()
    request = (
        f"POST /api/v1/devices/{dev['device_id']}/uplink HTTP/1.1\r\nHost: x\r\n"
        f"X-API-Key: {dev['api_key']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    await api.session.close()  # no idle keep-alive connection of ours in the way

    # Redis holds every write for up to 20 s: the uplink's append waits there, for real.
    await redis.client_pause(20_000, all=False)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        # Bounded wait until the handler is past authentication (key in the resolver cache).
        cache, lookup = http_node.services.resolver.cache, api_keys.hash_key(dev["api_key"])
        for _ in range(1000):
            if cache.get(CredentialKind.API_KEY, lookup, http_node.clock()) is not None:
                break
            await asyncio.sleep(0.01)
        assert cache.get(CredentialKind.API_KEY, lookup, http_node.clock()) is not None

        stopping = asyncio.create_task(listener.stop(15.0))
        for _ in range(1000):  # bounded: until the listening socket is closed
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                break
            w.close()
            await asyncio.sleep(0.01)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not stopping.done()  # still waiting for the request in flight
    finally:
        await redis.client_unpause()

    status_line = await asyncio.wait_for(reader.readline(), timeout=30)
    assert b" 202 " in status_line
    await asyncio.wait_for(stopping, timeout=30)
    writer.close()
    entries = await redis.xrange(KeySchema("corem").uplink_stream("acme"))
    assert [json.loads(f["payload"]) for _id, f in entries] == ["in flight"]
