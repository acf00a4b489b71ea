"""A broker node killed (SIGKILL) under a device holding a DTLS session: the device notices
(its confirmable POST gets no answer), handshakes with another node (as a load balancer
re-hashes it), its uplinks are acknowledged and stored there, and a revocation issued
afterwards closes that session (close_notify) and refuses the next handshake.

Two real ``corem-ingress serve`` processes on one real Redis; the device is the simulator's
in-process OpenSSL DTLS 1.2 client (PSK) over loopback UDP, keeping its session open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiocoap.numbers.codes import Code

from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.ops.brokers import Broker, metric, wait_ready
from tests.ops.test_faults_coap import post

pytestmark = pytest.mark.integration


async def test_node_killed_dtls_device_rehandshakes_elsewhere_and_revocation_applies(
    brokers: Callable[..., Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    pki: dict[str, Path],
) -> None:
    a, b = brokers("node-a", coap=True), brokers("node-b", coap=True)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    assert a.coap_port is not None and b.coap_port is not None
    out = await registry.provision(
        "fod", "SN-D1", CredentialKind.PSK, actor="test", psk_identity="fod:d1"
    )
    assert out.psk is not None
    ctx = psk_context(b"fod:d1", out.psk.psk)
    client = await AsyncDtlsClient.connect(ctx, a.coap_port)
    try:
        assert client.client.done
        assert await post(client, b'{"n":1}', timeout=5) == Code.CHANGED

        a.proc.kill()  # SIGKILL: no close_notify
        killed_at = time.monotonic()
        await asyncio.to_thread(a.proc.wait, 5)
        # The device's next POST goes unanswered: it gives up on the session ...
        assert await post(client, b'{"n":2}', timeout=2) is None
        client.close()
        # ... and handshakes again, which the load balancer sends to the surviving node.
        client = await AsyncDtlsClient.connect(ctx, b.coap_port)
        assert client.client.done
        assert await post(client, b'{"n":2}', timeout=5) == Code.CHANGED
        reconnected_after = time.monotonic() - killed_at
        entries = await redis.xrange(keys.uplink_stream("fod"))
        assert [e[1]["payload"] for e in entries] == ['{"n":1}', '{"n":2}']

        revoked_at = time.monotonic()
        await registry.revoke_psk("fod", out.device.device_id, actor="test")
        await client.wait_closed(timeout=10)  # close_notify from node-b
        assert client.client.closed
        revoke_to_close = time.monotonic() - revoked_at
        client.close()
        client = await AsyncDtlsClient.connect(ctx, b.coap_port, timeout=10)
        assert not client.client.done  # the revoked PSK is refused
        orders = await asyncio.to_thread(
            metric,
            b,
            'corem_disconnect_orders_total{reason="credential_revoked",transport="coap"}',
        )
        assert orders == 1
        print(
            f"\nnode SIGKILL under a DTLS session: device re-handshook with the other node "
            f"and was acknowledged {reconnected_after:.2f}s after the kill (2 s of it its "
            f"unanswered POST); revoke -> close_notify {revoke_to_close * 1000:.0f} ms; "
            f"acked uplinks stored: {len(entries)}/2"
        )
    finally:
        client.close()
