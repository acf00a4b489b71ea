"""The shared uplink batcher (MQTT, HTTP) on a real Redis Cluster: routed by slot, none lost."""

from __future__ import annotations

import asyncio

from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.store.connection import PoolSettings, keyed_commands, redis_client
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.uplink_batcher import UplinkBatcher
from tests.ops.redis_topologies import RedisClusterProcs


async def test_batches_spanning_tenants_land_on_their_slots(
    redis_cluster: RedisClusterProcs,
) -> None:
    # Long timeouts: on a busy test machine a timed-out EVAL may have run, and a retried
    # one store twice (at least once, by design); this test checks routing and order.
    client = redis_client(redis_cluster.url, socket_timeout=10)
    keys = KeySchema("corem")
    # The node's request path: each stream's lane through the per-master router.
    router = keyed_commands(redis_cluster.url, PoolSettings(socket_timeout=10, wait_s=10))
    batcher = UplinkBatcher(client, keys, keyed=router, timeout_s=10)
    results: list[Unavailable | None] = []
    sent: dict[str, list[str]] = {}
    try:
        for i in range(60):
            tenant = f"tenant-{i % 6}"  # six streams: spread over the three masters' slots
            ident = DeviceIdentity(tenant, f"dev-{i}", CredentialKind.API_KEY, "key_x")
            up = Uplink.new(ident, Transport.MQTT, UplinkKind.TELEMETRY, {"i": i}, now=float(i))
            sent.setdefault(tenant, []).append(up.message_id)
            batcher.submit(up, results.append)
        await batcher.drain(10)
        async with asyncio.timeout(10):
            while len(results) < 60:
                await asyncio.sleep(0.01)
        assert results == [None] * 60
        for tenant, ids in sent.items():
            stored = await client.xrange(keys.uplink_stream(tenant))
            assert [f["message_id"] for _id, f in stored] == ids  # all there, in order
    finally:
        await batcher.close()
        await router.aclose()
        await client.aclose()
