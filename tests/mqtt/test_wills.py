"""Wills: never routed to other devices; stored as the device's uplink only when configured."""

from __future__ import annotations

import asyncio
import json

import pytest

from corem_ingress.adapters.mqtt import codec
from tests.mqtt.conftest import RawClient, client_ssl, provision_x509, wait_for

pytestmark = pytest.mark.integration


def connect_with_will(client_id: str, will_topic: str, will_payload: bytes) -> bytes:
    return codec.encode_connect(
        codec.Connect(4, client_id, True, 60, None, None, will_topic, will_payload, 1, False)
    )


async def session(listener, pki, dev, will_topic: str) -> RawClient:  # type: ignore[no-untyped-def]
    client = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await client.send(connect_with_will(dev.device_id, will_topic, b'{"state":"offline"}'))
    connack = await client.read_packet()
    assert connack is not None and connack[-1] == 0, connack
    return client


async def uplinks(redis, tenant: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return [f for _id, f in await redis.xrange(f"corem:uplink:{{{tenant}}}")]


async def test_will_becomes_an_uplink_on_abrupt_close_only(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(wills_as_uplinks=True)
    dev = await provision_x509(registry, pki, "acme", "hw-will")
    own = f"devices/{dev.device_id}/up/state"

    # Graceful DISCONNECT: no will.
    client = await session(listener, pki, dev, own)
    await client.send(bytes((codec.PacketType.DISCONNECT << 4, 0)))
    assert await client.closed_by_server()
    # Abrupt close (no DISCONNECT): the will is stored as the device's own "state" uplink.
    client = await session(listener, pki, dev, own)
    client.writer.transport.abort()
    await wait_for(lambda: listener.stats["wills_stored"] == 1, what="will stored")
    await asyncio.sleep(0.2)  # let the batch land
    (entry,) = await uplinks(redis, "acme")
    assert entry["device_id"] == dev.device_id and entry["kind"] == "state"
    assert entry["transport"] == "mqtt" and json.loads(entry["payload"]) == {"state": "offline"}


async def test_will_on_a_foreign_topic_is_never_stored(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(wills_as_uplinks=True)
    dev = await provision_x509(registry, pki, "acme", "hw-w1")
    other = await provision_x509(registry, pki, "acme", "hw-w2")
    client = await session(listener, pki, dev, f"devices/{other.device_id}/up/state")
    client.writer.transport.abort()
    await wait_for(lambda: listener.stats["connect_accepted"] >= 1, what="accepted")
    await asyncio.sleep(0.3)
    assert listener.stats["wills_stored"] == 0
    assert await uplinks(redis, "acme") == []


async def test_wills_are_ignored_by_default(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-w3")
    client = await session(listener, pki, dev, f"devices/{dev.device_id}/up/state")
    client.writer.transport.abort()
    await asyncio.sleep(0.3)
    assert listener.stats["wills_stored"] == 0
    assert await uplinks(redis, "acme") == []
