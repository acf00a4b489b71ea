"""A broker node killed (SIGKILL) under a connected MQTT device: the device reconnects
through another node (as a load balancer re-hashes it), its uplinks are acknowledged and
stored there, and a revocation issued afterwards still disconnects it.

Two real ``corem-ingress serve`` processes on one real Redis; the device is paho-mqtt
over TLS with an API key. The adapters are used as built, not modified.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.ops.brokers import Broker, Device, metric, wait_ready

pytestmark = pytest.mark.integration


async def test_node_killed_device_reconnects_elsewhere_and_revocation_applies(
    brokers: Callable[[str], Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    pki: dict[str, Path],
) -> None:
    a, b = brokers("node-a"), brokers("node-b")
    await asyncio.gather(wait_ready(a), wait_ready(b))
    out = await registry.provision("fo", "SN-1", CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    dev = Device(out.device.device_id, out.api_key.api_key, pki["ca"])
    try:
        assert await asyncio.to_thread(dev.connect, a.mqtt_port) == 0
        await asyncio.to_thread(dev.publish, 1)

        a.proc.kill()  # SIGKILL: no goodbye to the device
        killed_at = time.monotonic()
        await asyncio.to_thread(a.proc.wait, 5)
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "the device noticed nothing"
        dev.close()

        # The load balancer sends the device to the surviving node.
        assert await asyncio.to_thread(dev.connect, b.mqtt_port) == 0
        reconnected_after = time.monotonic() - killed_at
        await asyncio.to_thread(dev.publish, 2)
        entries = await redis.xrange(keys.uplink_stream("fo"))
        assert [e[1]["payload"] for e in entries] == ['{"n":1}', '{"n":2}']

        revoked_at = time.monotonic()
        await registry.revoke_api_key("fo", out.api_key.key_id, actor="test")
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "revocation did not apply"
        revoke_to_disconnect = time.monotonic() - revoked_at
        dev.close()
        assert await asyncio.to_thread(dev.connect, b.mqtt_port) not in (0, None)
        orders = await asyncio.to_thread(
            metric,
            b,
            'corem_disconnect_orders_total{reason="credential_revoked",transport="mqtt"}',
        )
        assert orders == 1
        print(
            f"\nnode SIGKILL: device reconnected through the other node "
            f"{reconnected_after:.2f}s after the kill; revoke -> disconnect "
            f"{revoke_to_disconnect * 1000:.0f} ms; acked uplinks stored: {len(entries)}/2"
        )
    finally:
        dev.close()
