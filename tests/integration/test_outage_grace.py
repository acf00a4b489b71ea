"""The resolver's outage policy after a bus gap (``resolver.outage_grace_s``), real Redis.

The gap is what a cluster failover produces: the bus re-subscribes (through a node that
survived) while the registry's slot cannot be asked. Here one redis-server is stopped and
the node's hub is told of the gap (``resync``) as its bus would tell it, so that both
halves -- the gap and the unreachable registry -- happen together on a single server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from corem_ingress.app import Node
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unauthenticated, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.conftest import Clock, make_config

pytestmark = pytest.mark.integration
A = "cli:grace"


@pytest.fixture
def own_redis(durable_redis: EmbeddedRedis) -> EmbeddedRedis:
    return durable_redis


@pytest.fixture
async def node_with(own_redis: EmbeddedRedis, kek_env: str) -> AsyncIterator[object]:
    nodes: list[Node] = []

    async def start(grace_s: float, clock: Clock) -> Node:
        cfg = make_config(
            own_redis.url,
            redis={"socket_timeout_s": 0.5},
            resolver={"outage_grace_s": grace_s},
            health={"check_interval_s": 0.1},
        )
        node = Node(cfg, listener_factories=[], clock=clock)
        nodes.append(node)
        await node.start()
        assert node.bus is not None and node.services is not None
        await asyncio.wait_for(node.bus.subscribed.wait(), 10)
        node.services.sessions.revalidate_attempts = 3
        node.services.sessions.revalidate_delay_s = 0.05
        return node

    yield start
    for node in nodes:
        await node.stop()


async def _key(node: Node, hardware_id: str) -> str:
    assert node.services is not None
    out = await node.services.registry.provision(
        "grace", hardware_id, CredentialKind.API_KEY, actor=A
    )
    assert out.api_key is not None
    return out.api_key.api_key


def _session(node: Node, raw: str, ident: object, orders: list[DisconnectOrder]) -> None:
    assert node.services is not None
    node.services.sessions.register(
        LiveSession(f"s-{raw[-6:]}", "mqtt", ident, api_keys.hash_key(raw)),  # type: ignore[arg-type]
        orders.append,
    )


async def _live_device(
    node: Node, hardware_id: str, orders: list[DisconnectOrder]
) -> tuple[str, object]:
    """A provisioned device whose key this node resolved, with a live session here."""
    assert node.services is not None
    raw = await _key(node, hardware_id)
    ident = await node.services.resolver.resolve_api_key(raw)
    _session(node, raw, ident, orders)
    return raw, ident


async def _restart_and_resync(server: EmbeddedRedis, node: Node) -> None:
    """Redis back: the bus re-subscribes and its resync (which supersedes the one started
    by hand) re-validates everything."""
    assert node.bus is not None and node.services is not None
    resyncs = node.bus.resyncs
    await asyncio.to_thread(server.start)  # same port, same data
    async with asyncio.timeout(20):
        while node.bus.resyncs == resyncs or not node.bus.resync_task.done():  # type: ignore[union-attr]
            await asyncio.sleep(0.02)


async def _kill(server: EmbeddedRedis, node: Node) -> None:
    assert server.proc is not None and node.bus is not None
    server.proc.kill()
    server.proc.wait(timeout=5)
    async with asyncio.timeout(10):
        while node.bus.subscribed.is_set():
            await asyncio.sleep(0.02)


async def test_without_grace_a_gap_fails_closed(
    own_redis: EmbeddedRedis, node_with, clock: Clock
) -> None:  # type: ignore[no-untyped-def]
    node = await node_with(0.0, clock)
    s = node.services
    orders: list[DisconnectOrder] = []
    raw, ident = await _live_device(node, "SN-1", orders)

    await _kill(own_redis, node)
    # Redis down, no gap yet: the cache still vouches (today's behaviour, unchanged).
    assert await s.resolver.resolve_api_key(raw) == ident
    resync = asyncio.ensure_future(s.sessions.resync(clock()))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):  # the gap emptied the cache
        await s.resolver.resolve_api_key(raw)
    await asyncio.wait_for(resync, 10)
    assert [o.cause for o in orders] == [Cause.COULD_NOT_REVALIDATE]
    assert s.resolver.cache.fallbacks == 0


async def test_with_grace_recently_verified_credentials_keep_working_until_redis_answers(
    own_redis: EmbeddedRedis, node_with, clock: Clock
) -> None:  # type: ignore[no-untyped-def]
    node = await node_with(10.0, clock)
    s = node.services
    old, recent, unseen = [await _key(node, f"SN-{i}") for i in range(3)]
    ident_old = await s.resolver.resolve_api_key(old)  # verified 20 s before the gap
    clock.advance(20)
    ident = await s.resolver.resolve_api_key(recent)  # verified at the gap
    orders: list[DisconnectOrder] = []
    _session(node, recent, ident, orders)
    _session(node, old, ident_old, orders)

    await _kill(own_redis, node)
    resync = asyncio.ensure_future(s.sessions.resync(clock()))
    await asyncio.sleep(0)
    # Redis is asked first and cannot answer: the grace vouches for the recent one only.
    assert await s.resolver.resolve_api_key(recent) == ident
    with pytest.raises(Unavailable):
        await s.resolver.resolve_api_key(old)  # verified before the grace window
    with pytest.raises(Unavailable):
        await s.resolver.resolve_api_key(unseen)  # never vouched for
    async with asyncio.timeout(10):
        while "outage_grace" not in node.health_report().degraded:
            await asyncio.sleep(0.02)
    # Past the re-validation attempts: the uncovered session is closed, the covered stays.
    async with asyncio.timeout(10):
        while not orders:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert [(o.session_id, o.cause) for o in orders] == [
        (f"s-{old[-6:]}", Cause.COULD_NOT_REVALIDATE)
    ]
    assert not resync.done()  # still asking Redis about the covered one

    await _restart_and_resync(own_redis, node)
    assert resync.cancelled()  # superseded by the bus's own resync
    assert s.resolver.cache.fallbacks == 0  # Redis answered: everything re-validated
    assert len(orders) == 1  # the recent credential is valid: its session stays
    assert (await s.resolver.resolve_api_key(unseen)).tenant_id == "grace"
    assert "outage_grace" not in node.health_report().degraded


async def test_with_grace_a_revocation_missed_in_the_gap_applies_once_redis_answers(
    own_redis: EmbeddedRedis, node_with, clock: Clock
) -> None:  # type: ignore[no-untyped-def]
    """The grace's documented risk, bounded: a credential revoked while the bus was away
    keeps working only until Redis can be asked; then its session is closed."""
    node = await node_with(10.0, clock)
    s = node.services
    orders: list[DisconnectOrder] = []
    raw, ident = await _live_device(node, "SN-R", orders)
    # A revocation the bus did not carry (written while this node's subscription was away).
    assert node.redis is not None
    await node.redis.delete(node.keys.lookup(CredentialKind.API_KEY, api_keys.hash_key(raw)))

    await _kill(own_redis, node)
    resync = asyncio.ensure_future(s.sessions.resync(clock()))
    await asyncio.sleep(0)
    assert await s.resolver.resolve_api_key(raw) == ident  # the grace: Redis cannot say
    await _restart_and_resync(own_redis, node)
    assert resync.done()
    assert [o.cause for o in orders] == [Cause.NO_LONGER_VALID]
    with pytest.raises(Unauthenticated):
        await s.resolver.resolve_api_key(raw)


async def test_identical_lookups_in_flight_share_one_read(node_with, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    node = await node_with(0.0, clock)
    s = node.services
    raw = await _key(node, "SN-C")
    lookups = s.resolver.lookups
    before_batches, before_coalesced = lookups.batches, lookups.coalesced
    started = time.monotonic()
    results = await asyncio.gather(*(s.resolver.resolve_api_key(raw) for _ in range(50)))
    assert len({r.device_id for r in results}) == 1
    assert lookups.coalesced - before_coalesced == 49  # one read for fifty requests
    assert lookups.batches - before_batches <= 2  # (the health check's probe may add one)
    assert time.monotonic() - started < 5
