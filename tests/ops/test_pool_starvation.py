"""Redis connection pools under a burst (issue 12 §2): no spurious 503 while Redis is healthy.

A real ``corem-ingress serve`` process (HTTP only) on a real redis-server; real aiohttp
clients. At once: 400 devices send their first uplink (their keys are in no cache), an
operator sends 200 admin GETs, and an attacker sends 800 random API keys from 100 loopback
source addresses (8 each: under the failed-authentication throttle). Redis answers all
along, so no legitimate request may get 503: the resolver's lookups must not be starved by
the admin traffic or by the lookups of unknown keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.core import api_keys
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry
from tests.ops.brokers import Broker, wait_ready

pytestmark = pytest.mark.integration

TENANT = "burst"
DEVICES = 400
ADMIN_GETS = 200
ATTACK_SOURCES = 100
ATTACK_KEYS_PER_SOURCE = 8
A = "cli:starvation"


async def _provision(registry: Registry) -> list[tuple[str, str]]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[str, str]:
        async with gate:
            res = await registry.provision(TENANT, f"SN-{i}", CredentialKind.API_KEY, actor=A)
        assert res.api_key is not None
        return res.device.device_id, res.api_key.api_key

    return list(await asyncio.gather(*(one(i) for i in range(DEVICES))))


async def _status(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> int:
    try:
        async with session.request(
            method, url, timeout=aiohttp.ClientTimeout(total=60), **kwargs
        ) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0  # no answer at all: counted, and not a 2xx


async def test_burst_of_first_uplinks_admin_reads_and_unknown_keys_gets_no_503(
    brokers: Callable[..., Broker], registry: Registry
) -> None:
    token = generate_token()
    broker = brokers(
        "burst",
        http=True,
        env_extra={
            "COREM_MQTT_ENABLED": "false",
            "COREM_HTTP_ADMIN_MODE": "shared",
            "COREM_HTTP_ADMIN_TOKENS": f"{TENANT}:{hash_token(token)}:ops-burst",
        },
    )
    devices = await _provision(registry)
    await wait_ready(broker)
    base = f"http://127.0.0.1:{broker.http_port}"
    unlimited = {"limit": 0, "force_close": False}

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(**unlimited)) as devices_http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(**unlimited)) as admin_http,
    ):
        attackers = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(f"127.0.1.{i + 1}", 0), **unlimited)
            )
            for i in range(ATTACK_SOURCES)
        ]
        try:
            uplinks = [
                _status(
                    devices_http,
                    "POST",
                    f"{base}/api/v1/devices/{device_id}/uplink",
                    headers={"X-API-Key": key},
                    json={"kind": "telemetry", "payload": {"first": True}},
                )
                for device_id, key in devices
            ]
            reads = [
                _status(
                    admin_http,
                    "GET",
                    f"{base}/api/v1/devices/{devices[i % DEVICES][0]}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                for i in range(ADMIN_GETS)
            ]
            attack = [
                _status(
                    session,
                    "POST",
                    f"{base}/api/v1/devices/{devices[0][0]}/uplink",
                    headers={"X-API-Key": api_keys.generate()},
                    json={"kind": "telemetry", "payload": {}},
                )
                for session in attackers
                for _ in range(ATTACK_KEYS_PER_SOURCE)
            ]
            # Interleaved, so that no class has a head start on the others.
            mixed: list[Any] = []
            for i in range(max(len(uplinks), len(reads), len(attack))):
                for group in (attack, uplinks, reads):
                    if i < len(group):
                        mixed.append(group[i])
            started = time.monotonic()
            results = await asyncio.gather(*mixed)
            took = time.monotonic() - started
        finally:
            for session in attackers:
                await session.close()

    by_coro = dict(zip((id(c) for c in mixed), results, strict=True))
    uplink_status = Counter(by_coro[id(c)] for c in uplinks)
    read_status = Counter(by_coro[id(c)] for c in reads)
    attack_status = Counter(by_coro[id(c)] for c in attack)
    print(
        f"\nburst: {DEVICES} first uplinks {dict(uplink_status)}, {ADMIN_GETS} admin GETs "
        f"{dict(read_status)}, {len(attack)} unknown keys {dict(attack_status)} in {took:.2f}s"
    )
    assert uplink_status == {202: DEVICES}
    assert read_status == {200: ADMIN_GETS}
    # The attacker gets nothing in (and, under the throttle, is refused as unknown).
    assert set(attack_status) <= {401, 429}
    stored = await registry.redis.xlen(registry.keys.uplink_stream(TENANT))
    assert stored == DEVICES
