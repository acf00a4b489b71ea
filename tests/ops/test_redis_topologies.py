"""The broker on a real Redis Cluster (3 masters) and a real Sentinel setup, through the URL.

Each topology: provision (API key and PSK), resolve, revoke with the bus event reaching
another node, uplink append. Cluster only: every registry key in one slot; the bus moves
to another node when the node it listens on dies.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from corem_ingress.app import Node
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unauthenticated, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.store.connection import PoolSettings, is_cluster
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.slot_router import SlotRouter
from tests.ops.redis_topologies import RedisClusterProcs, RedisSentinelProcs, _command

A = "cli:ops-test"


async def _until(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _exercise(first: Node, second: Node) -> None:
    """Provision, resolve, revoke (the other node disconnects), uplink: on any topology."""
    a, b = first.services, second.services
    assert a is not None and b is not None
    tenant = "t" + uuid.uuid4().hex[:8]
    dev = await a.registry.provision(tenant, "SN-1", CredentialKind.API_KEY, actor=A)
    assert dev.created and dev.api_key is not None
    again = await a.registry.provision(tenant, "SN-1", CredentialKind.API_KEY, actor=A)
    assert not again.created and again.device.device_id == dev.device.device_id
    raw = dev.api_key.api_key
    ident = await b.resolver.resolve_api_key(raw)
    assert (ident.tenant_id, ident.device_id) == (tenant, dev.device.device_id)

    p = await a.registry.provision(tenant, "SN-2", CredentialKind.PSK, actor=A)
    assert p.psk is not None
    resolved = await b.resolver.resolve_psk(p.psk.psk_identity)
    assert resolved.psk == p.psk.psk

    # A live session on the second node; the first node revokes; the bus event crosses.
    orders: list[DisconnectOrder] = []
    b.sessions.register(LiveSession("sess-1", "mqtt", ident, api_keys.hash_key(raw)), orders.append)
    await a.registry.revoke_api_key(tenant, dev.api_key.key_id, actor=A)
    await _until(lambda: len(orders) == 1, what="the disconnect order on the other node")
    assert orders[0].session_id == "sess-1" and orders[0].cause is Cause.CREDENTIAL_REVOKED
    with pytest.raises(Unauthenticated):
        await b.resolver.resolve_api_key(raw)

    up = Uplink.new(ident, Transport.HTTP, UplinkKind.TELEMETRY, {"temp": 21.5}, now=time.time())
    entry_id = await b.uplinks.append(up)
    entries = await second.redis.xrange(second.keys.uplink_stream(tenant))
    assert [e[0] for e in entries] == [entry_id]
    assert Uplink.from_fields(entries[0][1]) == up

    assert await first.ready_checks() == {"redis": True, "bus": True}


async def test_cluster_provision_resolve_revoke_uplink(
    redis_cluster: RedisClusterProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    first = await node_on(redis_cluster.url)
    second = await node_on(redis_cluster.url)
    assert first.services is not None and is_cluster(first.redis)
    await _exercise(first, second)


async def test_sentinel_provision_resolve_revoke_uplink(
    redis_sentinel: RedisSentinelProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    first = await node_on(redis_sentinel.url)
    second = await node_on(redis_sentinel.url)
    await _exercise(first, second)
    # The data is on the master the sentinel named.
    assert b"keys=" in _command(redis_sentinel.master.port, "INFO", "keyspace")


def test_every_registry_key_is_in_one_slot() -> None:
    k = KeySchema("corem")
    registry_keys = [
        k.device("d"),
        k.device_credentials("d"),
        k.hardware("t", "h"),
        k.tenant_devices("t"),
        k.tenant_certs("t"),
        k.credential("c"),
        k.audit_stream,
        *(k.lookup(kind, "x") for kind in CredentialKind),
    ]
    assert {key_slot(key.encode()) for key in registry_keys} == {key_slot(b"corem")}
    # Streams spread per tenant.
    assert key_slot(k.uplink_stream("acme").encode()) == key_slot(b"acme")
    assert key_slot(k.downlink_stream("acme").encode()) == key_slot(b"acme")


async def test_cluster_slots_agree_with_the_server(
    redis_cluster: RedisClusterProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    node = await node_on(redis_cluster.url)
    assert node.services is not None
    k = node.keys
    for key in (k.device("d"), k.lookup(CredentialKind.PSK, "id"), k.audit_stream):
        assert await node.redis.cluster_keyslot(key) == key_slot(b"corem")


def _subscribers(port: int, channel: str) -> int:
    reply = _command(port, "PUBSUB", "NUMSUB", channel)
    match = re.search(rb":(\d+)\r\n", reply)
    return int(match.group(1)) if match else 0


def _owner(cluster: RedisClusterProcs, slot: int) -> int:
    """The port of the node serving ``slot`` (from CLUSTER NODES)."""
    reply = _command(cluster.procs[0].port, "CLUSTER", "NODES").decode()
    for line in reply.splitlines():
        fields = line.split()
        if len(fields) < 9 or "master" not in fields[2]:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for rng in fields[8:]:
            lo, _, hi = rng.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return port
    raise AssertionError(f"no owner for slot {slot}")


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcs]:
    """A cluster of its own for a test that kills a node (stopped after the nodes)."""
    procs = RedisClusterProcs()
    try:
        yield procs.start()
    finally:
        procs.close()


async def test_cluster_bus_moves_to_another_node_when_its_node_dies(
    own_cluster: RedisClusterProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    cluster = own_cluster
    # The bus subscribes through the known nodes in name order: the first one first. That
    # node dies here, so the registry's slot and the tenant's stream live elsewhere.
    bus_node = min(cluster.procs, key=lambda p: f"127.0.0.1:{p.port}")
    prefix = next(
        f"corem{i}"
        for i in range(100)
        if _owner(cluster, key_slot(f"corem{i}".encode())) != bus_node.port
    )
    tenant = next(
        f"t{i}" for i in range(100) if _owner(cluster, key_slot(f"t{i}".encode())) != bus_node.port
    )
    first = await node_on(cluster.url, redis={"key_prefix": prefix})
    second = await node_on(cluster.url, redis={"key_prefix": prefix})
    assert first.services is not None and second.services is not None
    assert second.bus is not None
    channel = second.bus.channel
    assert _subscribers(bus_node.port, channel) == 2

    # No warm-up: each Lua script is first run after the kill too (the revoke), and must not
    # need the dead master (the registry falls back to EVAL on the slot's node, not SCRIPT LOAD
    # on every master).
    dev = await first.services.registry.provision(tenant, "SN-9", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    ident = await second.services.resolver.resolve_api_key(dev.api_key.api_key)
    orders: list[DisconnectOrder] = []
    second.services.sessions.register(
        LiveSession("s-9", "mqtt", ident, api_keys.hash_key(dev.api_key.api_key)),
        orders.append,
    )

    resyncs = second.bus.resyncs
    victim = bus_node
    victim.stop(kill=True)
    killed_at = time.monotonic()
    await _until(
        lambda: second.bus.resyncs > resyncs and second.bus.subscribed.is_set(),
        timeout=30,
        what="re-subscription through another node",
    )
    print(f"\ncluster node SIGKILL: bus re-subscribed after {time.monotonic() - killed_at:.2f}s")
    others = [p for p in cluster.procs if p is not victim]
    assert sum(_subscribers(p.port, channel) for p in others) >= 1
    # The resync re-validates the live session against Redis: it still resolves, it stays.
    assert second.bus.resync_task is not None
    await asyncio.wait_for(second.bus.resync_task, 20)
    assert "s-9" in second.services.sessions.registry

    await first.services.registry.revoke_api_key(tenant, dev.api_key.key_id, actor=A)
    await _until(lambda: len(orders) == 1, what="the revocation after the node died")


@pytest.fixture
def sentinel_with_replica() -> Iterator[RedisSentinelProcs]:
    procs = RedisSentinelProcs(replicas=1, down_after_ms=1000)
    try:
        yield procs.start()
    finally:
        procs.close()


async def test_sentinel_failover_is_followed(
    sentinel_with_replica: RedisSentinelProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    topo = sentinel_with_replica
    first = await node_on(topo.url)
    second = await node_on(topo.url)
    assert first.services is not None and second.services is not None
    assert second.bus is not None
    tenant = "t" + uuid.uuid4().hex[:8]
    dev = await first.services.registry.provision(tenant, "SN-F", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    raw = dev.api_key.api_key
    ident = await second.services.resolver.resolve_api_key(raw)
    orders: list[DisconnectOrder] = []
    second.services.sessions.register(
        LiveSession("s-f", "mqtt", ident, api_keys.hash_key(raw)), orders.append
    )
    # The replica has the device before the master dies (replication is asynchronous).
    async with asyncio.timeout(10):
        while b"keys=" not in _command(topo.replicas[0].port, "INFO", "keyspace"):
            await asyncio.sleep(0.05)

    resyncs = second.bus.resyncs
    topo.master.stop(kill=True)
    killed_at = time.monotonic()
    await _until(
        lambda: topo.master_port() == topo.replicas[0].port, timeout=30, what="the failover"
    )
    promoted_after = time.monotonic() - killed_at
    await _until(
        lambda: second.bus.resyncs > resyncs and second.bus.subscribed.is_set(),
        timeout=30,
        what="the bus on the new master",
    )
    bus_after = time.monotonic() - killed_at
    async with asyncio.timeout(30):
        while not all((await first.ready_checks()).values()):
            await asyncio.sleep(0.1)
    ready_after = time.monotonic() - killed_at
    print(
        f"\nsentinel failover: promoted after {promoted_after:.2f}s, bus re-subscribed after "
        f"{bus_after:.2f}s, /readyz 200 after {ready_after:.2f}s"
    )
    assert second.bus.resync_task is not None
    await asyncio.wait_for(second.bus.resync_task, 20)
    assert "s-f" in second.services.sessions.registry  # still valid on the new master

    # Writes and events go through the new master.
    await first.services.registry.revoke_api_key(tenant, dev.api_key.key_id, actor=A)
    await _until(lambda: len(orders) == 1, what="the revocation through the new master")
    with pytest.raises(Unauthenticated):
        await second.services.resolver.resolve_api_key(raw)


async def test_registry_runs_its_scripts_after_a_script_flush(registry, redis) -> None:  # type: ignore[no-untyped-def]
    """A server without the scripts (restart, failover, SCRIPT FLUSH): EVAL on that node."""
    await redis.script_flush()
    out = await registry.provision("flush", "SN-1", CredentialKind.API_KEY, actor=A)
    assert out.created and out.api_key is not None
    await redis.script_flush()
    rec = await registry.revoke_api_key("flush", out.api_key.key_id, actor=A)
    assert rec.status == "revoked"


async def test_cluster_psk_reseal_under_a_new_kek(
    redis_cluster: RedisClusterProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    """KEK rotation on a cluster: SCAN walks every master, WATCH/MULTI in the registry slot."""
    from corem_ingress.core.psk import KeyRing, generate_kek_line
    from corem_ingress.store.registry import Registry
    from tests.conftest import KEK_LINE

    node = await node_on(redis_cluster.url)
    s = node.services
    tenant = "t" + uuid.uuid4().hex[:8]
    out = await s.registry.provision(tenant, "SN-K", CredentialKind.PSK, actor=A)
    assert out.psk is not None
    ring = KeyRing.parse(generate_kek_line("k2") + "\n" + KEK_LINE)
    rotated = Registry(
        node.redis, node.keys, keyring=ring, api_key_overlap=1, api_key_overlap_max=1
    )
    assert await rotated.reseal_psks(actor=A) >= 1
    raw = await node.redis.get(node.keys.lookup(CredentialKind.PSK, out.psk.psk_identity))
    assert '"kid":"k2"' in raw
    s.resolver.drop_cache()
    with pytest.raises(Unauthenticated):  # the old ring alone cannot open it any more
        await s.resolver.resolve_psk(out.psk.psk_identity)


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisClusterProcs]:
    procs = RedisClusterProcs(replicas=1)
    try:
        yield procs.start()
    finally:
        procs.close()


def _replica_caught_up(port: int) -> bool:
    info = _command(port, "INFO", "replication", timeout=2.0).decode(errors="replace")
    master = re.search(r"master_repl_offset:(\d+)", info)
    replicas = re.findall(r"slave\d+:.*?offset=(\d+)", info)
    return bool(master and replicas) and all(int(r) >= int(master.group(1)) for r in replicas)


async def test_cluster_master_failover_with_replicas(
    cluster_with_replicas: RedisClusterProcs, node_on
) -> None:  # type: ignore[no-untyped-def]
    """The master serving the registry slot dies; its replica takes over; the brokers follow."""
    cluster = cluster_with_replicas
    first = await node_on(cluster.url)
    second = await node_on(cluster.url)
    assert first.services is not None and second.services is not None
    tenant = "t" + uuid.uuid4().hex[:8]
    dev = await first.services.registry.provision(tenant, "SN-R", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    raw = dev.api_key.api_key
    ident = await second.services.resolver.resolve_api_key(raw)
    orders: list[DisconnectOrder] = []
    second.services.sessions.register(
        LiveSession("s-r", "mqtt", ident, api_keys.hash_key(raw)), orders.append
    )
    slot = key_slot(b"corem")
    victim = cluster.by_port(cluster.slot_owner(slot))
    # Replication is asynchronous: kill the master only once its replica has the writes
    # above, or the promoted replica may not know the device (a real loss, but not this test's).
    await _until(lambda: _replica_caught_up(victim.port), timeout=10, what="replica in sync")
    victim.stop(kill=True)
    killed_at = time.monotonic()

    def promoted() -> bool:
        try:
            return cluster.slot_owner(slot) != victim.port
        except AssertionError:  # the slot's master is marked failed, none promoted yet
            return False

    await _until(promoted, timeout=30, what="a replica promoted")
    promoted_after = time.monotonic() - killed_at

    # The registry works again once the client has the new topology (bounded retries).
    other = None
    async with asyncio.timeout(30):
        while other is None:
            try:
                other = await first.services.registry.provision(
                    tenant, "SN-R2", CredentialKind.API_KEY, actor=A
                )
            except Unavailable:
                await asyncio.sleep(0.1)
    writes_after = time.monotonic() - killed_at
    await first.services.registry.revoke_api_key(tenant, dev.api_key.key_id, actor=A)
    await _until(lambda: len(orders) == 1, timeout=20, what="the revocation after failover")
    revoked_after = time.monotonic() - killed_at
    with pytest.raises(Unauthenticated):
        await second.services.resolver.resolve_api_key(raw)
    print(
        f"\ncluster master failover: replica promoted after {promoted_after:.2f}s, registry "
        f"writes after {writes_after:.2f}s, revocation applied after {revoked_after:.2f}s"
    )


async def test_a_command_failing_on_a_dead_master_reads_the_map_again(
    cluster_with_replicas: RedisClusterProcs,
) -> None:
    """store/slot_router.py: a command that fails on a dead master gets a map read after it
    was sent. A map read just before (within the rate limit) that still names the dead
    master -- what a node holds when gossip had not reached the node it asked, or when it
    refreshed during the outage -- must not fail the first command after the promotion."""
    cluster = cluster_with_replicas
    router = SlotRouter(
        [("127.0.0.1", p.port) for p in cluster.procs],
        pool=PoolSettings(socket_timeout=1.0, wait_s=1.0),
        refresh_interval_s=0.2,
    )
    try:
        key = "{stale}:k"
        slot = key_slot(key.encode())
        await router.execute(key, "SET", key, "before")
        victim = cluster.by_port(cluster.slot_owner(slot))
        assert router.master_of(slot) == ("127.0.0.1", victim.port)
        before = await router._client(("127.0.0.1", victim.port)).execute_command("CLUSTER SLOTS")
        await _until(lambda: _replica_caught_up(victim.port), timeout=10, what="replica in sync")
        victim.stop(kill=True)

        def promoted() -> bool:
            try:
                return cluster.slot_owner(slot) != victim.port
            except AssertionError:
                return False

        await _until(promoted, timeout=30, what="a replica promoted")
        router._loaded(before)  # a refresh that just happened, from before the promotion
        refreshes = router.refreshes
        assert await router.execute(key, "GET", key) == "before"
        assert router.refreshes == refreshes + 1
        assert router.master_of(slot) != ("127.0.0.1", victim.port)
    finally:
        await router.aclose()
