"""The HTTP uplink and admin API on a real Redis Cluster (3 masters) and on Sentinel:
the same 202-after-append, through whichever client the Redis URL gives."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from corem_ingress.adapters import http
from tests.ops.redis_topologies import RedisClusterProcs, RedisSentinelProcs

from .conftest import Api


async def exercise(start_node: Any, operator_tokens: Any, url: str) -> None:
    path, tokens = operator_tokens
    node = await start_node([http.build], redis={"url": url}, http={"admin_tokens_file": str(path)})
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)
        dev = await api.provision("acme", "hw-topology")
        other = await api.provision("globex", "hw-topology")
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(api.uplink(dev["device_id"], dev["api_key"]) for _ in range(10)),
                *(api.uplink(other["device_id"], other["api_key"]) for _ in range(5)),
            ),
            timeout=60,
        )
        assert [r.status for r in replies] == [202] * 15
        detail = await api.request("GET", f"/api/v1/devices/{dev['device_id']}", tenant="acme")
        assert detail.status == 200
    redis = node.redis
    for tenant, device, n, answered in (
        ("acme", dev, 10, replies[:10]),
        ("globex", other, 5, replies[10:]),
    ):
        entries = await redis.xrange(node.keys.uplink_stream(tenant))
        assert len(entries) == n
        assert {f["message_id"] for _id, f in entries} == {r.body["message_id"] for r in answered}
        assert {f["device_id"] for _id, f in entries} == {device["device_id"]}


async def test_http_on_redis_cluster(
    redis_cluster: RedisClusterProcs, start_node: Any, operator_tokens: Any
) -> None:
    await exercise(start_node, operator_tokens, redis_cluster.url)


async def test_http_on_redis_sentinel(
    redis_sentinel: RedisSentinelProcs, start_node: Any, operator_tokens: Any
) -> None:
    await exercise(start_node, operator_tokens, redis_sentinel.url)
