"""Resolver + bus + session hub on a real Redis: revocations, overlap end, resync, fail-closed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.app import Node, redis_client
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unauthenticated, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.trust import PeerChain
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.store.registry import Registry
from tests.pki import trust_ca

A = "cli:test"


class Orders:
    """Collects disconnect orders carried out by a node's hub."""

    def __init__(self, node: Node) -> None:
        assert node.services is not None
        self.items: list[DisconnectOrder] = []
        self._event = asyncio.Event()
        node.services.sessions.observers.append(self._on)

    def _on(self, order: DisconnectOrder) -> None:
        self.items.append(order)
        self._event.set()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[DisconnectOrder]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._event.clear()
                await self._event.wait()
        return self.items


def closer(closed: list[str]):  # type: ignore[no-untyped-def]
    def close(order: DisconnectOrder) -> None:
        closed.append(order.session_id)

    return close


async def test_revocation_evicts_cache_and_disconnects_sessions(
    start_node, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    hub, resolver = node.services.sessions, node.services.resolver
    orders = Orders(node)
    ca = devcerts.make_ca()
    await trust_ca(registry, "acme", ca)
    cert = devcerts.issue(ca, "d")
    dev = await registry.provision(
        "acme", "hw-r", CredentialKind.X509, actor=A, cert_pem=cert.cert_pem
    )
    chain = PeerChain((ca.fingerprint,))
    ident = await resolver.resolve_cert(cert.fingerprint, chain=chain)
    assert resolver.cached_cert(cert.fingerprint, chain) == ident
    closed: list[str] = []
    hub.register(LiveSession("mqtt-1", "mqtt", ident, cert.fingerprint), closer(closed))
    hub.register(LiveSession("coap-1", "coap", ident, cert.fingerprint), closer(closed))
    other = await registry.provision("acme", "hw-o", CredentialKind.API_KEY, actor=A)
    assert other.api_key is not None
    other_ident = await resolver.resolve_api_key(other.api_key.api_key)
    hub.register(
        LiveSession("http-1", "http", other_ident, api_keys.hash_key(other.api_key.api_key)),
        closer(closed),
    )

    await registry.revoke_cert("acme", cert.fingerprint, actor=A)
    got = await orders.wait(2)
    assert sorted(o.session_id for o in got) == ["coap-1", "mqtt-1"]
    assert sorted(closed) == ["coap-1", "mqtt-1"]
    assert len(hub) == 1  # the other device's session is untouched
    # The cache no longer vouches: the next lookup asks Redis and is refused.
    assert resolver.cached_cert(cert.fingerprint) is None
    with pytest.raises(Unauthenticated):
        await resolver.resolve_cert(cert.fingerprint, chain=chain)
    with pytest.raises(Unauthenticated):
        resolver.cached_cert(cert.fingerprint)  # now a negative entry
    assert dev.device.device_id == ident.device_id


async def test_created_event_clears_negative_entry(start_node, registry: Registry) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    resolver = node.services.resolver
    with pytest.raises(Unauthenticated):
        await resolver.resolve_psk("acme:late-id")
    with pytest.raises(Unauthenticated):
        resolver.cached_psk("acme:late-id")
    await registry.provision(
        "acme", "hw-late", CredentialKind.PSK, actor=A, psk_identity="acme:late-id"
    )
    for _ in range(100):
        if resolver.cache.get(CredentialKind.PSK, "acme:late-id", time.time()) is None:
            break
        await asyncio.sleep(0.02)
    assert (await resolver.resolve_psk("acme:late-id")).identity.tenant_id == "acme"
    assert resolver.cached_psk("acme:late-id") is not None


async def test_overlap_end_disconnects_sessions_of_the_old_key(
    start_node, registry: Registry
) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    hub, resolver = node.services.sessions, node.services.resolver
    orders = Orders(node)
    dev = await registry.provision("acme", "hw-ov", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    ident = await resolver.resolve_api_key(dev.api_key.api_key)
    hub.register(
        LiveSession("s-old", "mqtt", ident, api_keys.hash_key(dev.api_key.api_key)), lambda o: None
    )
    new = await registry.rotate_api_key("acme", dev.api_key.key_id, actor=A, overlap=0.3)
    new_ident = await resolver.resolve_api_key(new.api_key)
    hub.register(
        LiveSession("s-new", "mqtt", new_ident, api_keys.hash_key(new.api_key)), lambda o: None
    )
    got = await orders.wait(1)
    assert [(o.session_id, o.cause) for o in got] == [("s-old", Cause.CREDENTIAL_EXPIRED)]
    assert len(hub) == 1
    with pytest.raises(Unauthenticated):
        await resolver.resolve_api_key(dev.api_key.api_key)


async def test_bus_gap_triggers_resync_and_revalidation(
    start_node, registry: Registry, redis: aioredis.Redis
) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    hub, resolver = node.services.sessions, node.services.resolver
    orders = Orders(node)
    a = await registry.provision(
        "acme", "hw-g1", CredentialKind.PSK, actor=A, psk_identity="acme:gap-1"
    )
    b = await registry.provision(
        "acme", "hw-g2", CredentialKind.PSK, actor=A, psk_identity="acme:gap-2"
    )
    for res, sid in ((a, "s-a"), (b, "s-b")):
        assert res.psk is not None
        ident = (await resolver.resolve_psk(res.psk.psk_identity)).identity
        hub.register(LiveSession(sid, "coap", ident, res.psk.psk_identity), lambda o: None)
    # A change whose event this node never sees (as when pub/sub drops messages in a gap).
    await redis.delete("{corem}:auth:psk:acme:gap-1")
    assert resolver.cached_psk("acme:gap-1") is not None  # the cache still vouches: stale
    resyncs = node.bus.resyncs
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    got = await orders.wait(1)
    assert node.bus.resync_task is not None
    await asyncio.wait_for(node.bus.resync_task, 10)
    assert [(o.session_id, o.cause) for o in got] == [("s-a", Cause.NO_LONGER_VALID)]
    assert node.bus.resyncs == resyncs + 1
    assert resolver.cached_psk("acme:gap-2") is not None  # refilled by re-validation
    with pytest.raises(Unauthenticated):
        resolver.cached_psk("acme:gap-1")
    assert len(hub) == 1


async def test_fail_closed_while_redis_is_down_then_recovers(
    durable_redis: EmbeddedRedis, node_on: Any
) -> None:
    node = await node_on(durable_redis.url, redis={"socket_timeout_s": 0.5})
    await asyncio.wait_for(node.bus.subscribed.wait(), 5)
    services = node.services
    reg = services.registry
    known = await reg.provision("acme", "hw-f1", CredentialKind.API_KEY, actor=A)
    unseen = await reg.provision("acme", "hw-f2", CredentialKind.API_KEY, actor=A)
    assert known.api_key is not None and unseen.api_key is not None
    ident = await services.resolver.resolve_api_key(known.api_key.api_key)
    orders = Orders(node)
    services.sessions.register(
        LiveSession("s-k", "http", ident, api_keys.hash_key(known.api_key.api_key)),
        lambda o: None,
    )
    assert await node.ready_checks() == {"redis": True, "bus": True}

    durable_redis.stop()
    # Nothing the cache cannot vouch for is accepted.
    with pytest.raises(Unavailable):
        await services.resolver.resolve_api_key(unseen.api_key.api_key)
    # What the cache vouches for (fresh, not revoked before the outage) still resolves.
    assert (await services.resolver.resolve_api_key(known.api_key.api_key)) == ident
    for _ in range(100):
        if not node.bus.subscribed.is_set():
            break
        await asyncio.sleep(0.05)
    checks = await node.ready_checks()
    assert checks == {"redis": False, "bus": False}

    durable_redis.start()  # same port, same data (AOF)
    await asyncio.wait_for(node.bus.subscribed.wait(), 15)
    for _ in range(100):
        if node.bus.resyncs >= 1:
            break
        await asyncio.sleep(0.05)
    assert node.bus.resyncs >= 1
    assert (
        await services.resolver.resolve_api_key(unseen.api_key.api_key)
    ).device_id == unseen.device.device_id
    assert len(services.sessions) == 1 and orders.items == []  # still valid: kept
    assert await node.ready_checks() == {"redis": True, "bus": True}


async def test_revocation_reaches_another_process(registry: Registry, redis_url: str) -> None:
    dev = await registry.provision("acme", "hw-2p", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    spec = f"api_key:{dev.api_key.key_id}:{api_keys.hash_key(dev.api_key.api_key)}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corem_ingress.sim.revocation_probe",
            "--redis-url",
            redis_url,
            "--watch",
            spec,
            "--max-seconds",
            "20",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert json.loads(ready) == {"ready": True, "sessions": 1}
        await registry.revoke_api_key("acme", dev.api_key.key_id, actor=A)
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        order = json.loads(line)
        assert order["credential_id"] == dev.api_key.key_id
        assert order["reason"] == "credential_revoked"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_redis_client_helper_decodes(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        await client.set("x", "y")
        assert await client.get("x") == "y"
    finally:
        await client.aclose()
