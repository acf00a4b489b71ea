"""Prometheus /metrics on the health port of a real Node and a real Redis: counters move."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corem_ingress.app import Node
from corem_ingress.core import api_keys
from corem_ingress.core.errors import NotFound, Unauthenticated, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.embedded_redis import EmbeddedRedis

A = "cli:metrics-test"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(node: Node) -> Samples:
    url = f"http://127.0.0.1:{node.health_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Delta:
    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


async def test_metrics_move_after_provision_resolve_revoke_uplink(start_node) -> None:  # type: ignore[no-untyped-def]
    node = await start_node([])
    s = node.services
    before = await scrape(node)
    assert value(before, "corem_resolver_cache_hit_ratio") >= 0.0
    assert any(name.startswith("process_") for name, _ in before)  # process collector

    tenant = "metrics-acme"
    dev = await s.registry.provision(tenant, "SN-M1", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    raw = dev.api_key.api_key
    ident = await s.resolver.resolve_api_key(raw)  # miss: asks Redis
    assert await s.resolver.resolve_api_key(raw) == ident  # hit
    with pytest.raises(Unauthenticated):
        await s.resolver.resolve_api_key("not-a-key")
    with pytest.raises(Unauthenticated):
        await s.resolver.resolve_api_key(api_keys.generate())  # well-formed, unknown

    orders: list[DisconnectOrder] = []
    s.sessions.register(LiveSession("m-1", "mqtt", ident, api_keys.hash_key(raw)), orders.append)
    live = await scrape(node)
    assert value(live, "corem_sessions_live", transport="mqtt", tenant=tenant) == 1

    await s.uplinks.append(
        Uplink.new(ident, Transport.HTTP, UplinkKind.TELEMETRY, {"v": 1}, now=time.time())
    )
    await s.registry.revoke_api_key(tenant, dev.api_key.key_id, actor=A)
    async with asyncio.timeout(10):
        while not orders:
            await asyncio.sleep(0.02)
    with pytest.raises(NotFound):  # a refused operation is counted by its outcome
        await s.registry.revoke_api_key(tenant, "key_0000000000000000", actor=A)
    code = NotFound.code

    after = await scrape(node)
    d = Delta(before, after)
    assert d("corem_credential_operations_total", action="devices.provision", outcome="OK") == 1
    assert d("corem_credential_operations_total", action="keys.revoke", outcome="OK") == 1
    assert d("corem_credential_operations_total", action="keys.revoke", outcome=code) == 1
    assert d("corem_resolver_cache_hits_total") >= 1
    assert d("corem_resolver_cache_misses_total") >= 2
    assert 0.0 < value(after, "corem_resolver_cache_hit_ratio") < 1.0
    assert d("corem_resolver_refusals_total", kind="api_key", reason="malformed") == 1
    assert d("corem_resolver_refusals_total", kind="api_key", reason="unknown_or_revoked") == 1
    assert d("corem_bus_events_total", type="created") >= 1
    assert d("corem_bus_events_total", type="revoked") == 1
    assert d("corem_revocations_total", kind="api_key") == 1
    assert d("corem_revoke_to_disconnect_seconds_count") == 1
    assert d("corem_disconnect_orders_total", transport="mqtt", reason="credential_revoked") == 1
    assert value(after, "corem_sessions_live", transport="mqtt", tenant=tenant) == 0
    assert d("corem_uplinks_total", transport="http", outcome="ok") == 1
    assert d("corem_uplink_append_seconds_count", transport="http") == 1

    # The throttle shared by the node's listeners reports its blocks.
    for now in range(s.access.throttle.max_failures):
        s.access.throttle.failure("192.0.2.7", float(now))
    throttled = await scrape(node)
    assert (
        value(throttled, "corem_auth_throttle_blocks_total")
        - value(after, "corem_auth_throttle_blocks_total")
        == 1
    )
    assert value(throttled, "corem_auth_throttle_sources") >= 1

    # Health endpoints are unchanged next to /metrics.
    async with aiohttp.ClientSession() as http:
        for path, status in (("/healthz", 200), ("/readyz", 200)):
            async with http.get(f"http://127.0.0.1:{node.health_port}{path}") as resp:
                assert resp.status == status


async def test_redis_errors_and_failed_appends_are_counted(
    durable_redis: EmbeddedRedis, node_on: Any
) -> None:
    node = await node_on(durable_redis.url, redis={"socket_timeout_s": 0.5})
    assert node.bus is not None and node.services is not None
    async with asyncio.timeout(10):
        await node.bus.subscribed.wait()
    s = node.services
    dev = await s.registry.provision("m-down", "SN-D1", CredentialKind.API_KEY, actor=A)
    assert dev.api_key is not None
    ident = await s.resolver.resolve_api_key(dev.api_key.api_key)
    before = await scrape(node)
    durable_redis.stop()
    with pytest.raises(Unavailable):
        await s.resolver.resolve_api_key(api_keys.generate())
    with pytest.raises(Unavailable):
        await s.uplinks.append(
            Uplink.new(ident, Transport.MQTT, UplinkKind.EVENT, {"v": 2}, now=time.time())
        )
    async with asyncio.timeout(10):
        while node.bus.subscribed.is_set():
            await asyncio.sleep(0.05)
    after = await scrape(node)
    d = Delta(before, after)
    assert d("corem_redis_errors_total", component="resolver") == 1
    assert d("corem_redis_errors_total", component="uplinks") == 1
    assert d("corem_redis_errors_total", component="bus") >= 1
    assert d("corem_uplinks_total", transport="mqtt", outcome="failed") == 1
    assert d("corem_resolver_refusals_total", kind="api_key", reason="unavailable") == 0
