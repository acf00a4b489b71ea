"""Graceful shutdown of the MQTT listener: stop accepting, let accepted QoS 1 messages reach
Redis (PUBACK only then), then close every connection (TLS close_notify)."""

from __future__ import annotations

import asyncio

import pytest

from corem_ingress.adapters.mqtt import codec
from tests.mqtt.conftest import RawClient, client_ssl, connect_packet, provision_x509

pytestmark = pytest.mark.integration


async def test_stop_acks_what_it_accepted_then_closes(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-stop")
    client = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id))
    connack = await client.read_packet()
    assert connack is not None and connack[-1] == 0
    topic = f"devices/{dev.device_id}/up/telemetry"
    # Redis holds every write for up to 20 s: the append of this message waits there.
    await redis.client_pause(20_000, all=False)
    try:
        await client.send(codec.encode_publish(topic, b'{"n":1}', 1, 7))
        for _ in range(500):  # bounded: until the listener holds it for Redis
            if len(listener.batcher) or listener.batcher._task is not None:
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(listener.stop(20.0))
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):  # no new connections while stopping
            await asyncio.open_connection("127.0.0.1", listener.port)
        assert not stopping.done()
    finally:
        await redis.client_unpause()
    puback = await client.read_packet()
    assert puback == codec.encode_ack(codec.PacketType.PUBACK, 7)
    assert await client.closed_by_server()
    await asyncio.wait_for(stopping, 20)
    entries = await redis.xrange("corem:uplink:{acme}")
    assert [f["payload"] for _id, f in entries] == ['{"n":1}']
