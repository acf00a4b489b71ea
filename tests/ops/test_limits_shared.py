"""Per-tenant connection limits and auth blocks hold across nodes (shared through real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from corem_ingress.app import Node


async def synced(*nodes: Node) -> None:
    """Two full sync rounds on every node (bounded)."""
    start = [n.limits_sync.rounds for n in nodes if n.limits_sync is not None]
    async with asyncio.timeout(10):
        while any(
            n.limits_sync is not None and n.limits_sync.rounds < s + 2
            for n, s in zip(nodes, start, strict=True)
        ):
            await asyncio.sleep(0.02)


async def test_tenant_limit_and_auth_blocks_span_the_nodes(start_node: Any) -> None:
    limits = {
        "per_tenant_max_connections": 2,
        "auth_fail_max": 3,
        "auth_block_s": 60.0,
        "sync_interval_s": 0.05,
    }
    a = await start_node([], limits=limits)
    b = await start_node([], limits=limits)
    ca, cb = a.services.access.tenant_connections, b.services.access.tenant_connections
    assert ca.acquire("acme") and ca.acquire("acme")
    await synced(a, b)
    assert not cb.acquire("acme")  # the tenant has its 2 connections, on node a
    assert cb.acquire("globex")
    ca.release("acme")
    await synced(a, b)
    assert cb.acquire("acme")

    now = a.clock()
    for i in range(3):
        a.services.access.throttle.failure("192.0.2.7", now + i)
    assert a.services.access.throttle.blocked("192.0.2.7", now + 3)
    assert not b.services.access.throttle.blocked("192.0.2.7", b.clock())
    await synced(a, b)
    assert b.services.access.throttle.blocked("192.0.2.7", b.clock())  # blocked on every node


async def test_a_node_that_stops_drops_out_of_the_counts(start_node: Any) -> None:
    limits = {"per_tenant_max_connections": 1, "sync_interval_s": 0.05}
    a = await start_node([], limits=limits)
    b = await start_node([], limits=limits)
    assert a.services.access.tenant_connections.acquire("acme")
    await synced(a, b)
    assert not b.services.access.tenant_connections.acquire("acme")
    await a.stop()  # its hash expires after 3 intervals and it leaves the live set
    async with asyncio.timeout(10):
        while not b.services.access.tenant_connections.acquire("acme"):
            await asyncio.sleep(0.05)
