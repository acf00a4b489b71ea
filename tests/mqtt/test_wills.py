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


def connect_v5_with_delayed_will(client_id: str, will_topic: str, delay: int) -> bytes:
    from corem_ingress.adapters.mqtt.properties import Prop, Properties

    return codec.encode_connect(
        codec.Connect(
            5,
            client_id,
            False,
            60,
            None,
            None,
            will_topic,
            b'{"state":"gone"}',
            1,
            False,
            properties=Properties({Prop.SESSION_EXPIRY_INTERVAL: 300}),
            will_properties=Properties(
                {Prop.WILL_DELAY_INTERVAL: delay, Prop.CONTENT_TYPE: "application/json"}
            ),
        )
    )


async def test_will_delay_reconnect_on_another_node_cancels_else_stored_with_properties(
    mqtt_node, registry, pki, redis
):  # type: ignore[no-untyped-def]
    """MQTT 5 Will Delay Interval (issue 13 §5): a reconnect within the delay, on any node,
    cancels the will; otherwise it is stored after the delay, with its properties."""
    _a, la = await mqtt_node(wills_as_uplinks=True)
    _b, lb = await mqtt_node(wills_as_uplinks=True)
    dev = await provision_x509(registry, pki, "acme", "hw-delay")
    own = f"devices/{dev.device_id}/up/state"

    async def visit(listener, delay: int) -> RawClient:  # type: ignore[no-untyped-def]
        client = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
        await client.send(connect_v5_with_delayed_will(dev.device_id, own, delay))
        connack = await client.read_packet()
        assert connack is not None and connack[3] == 0, connack
        return client

    client = await visit(la, 1)
    client.writer.transport.abort()
    await wait_for(lambda: la.holder(dev.device_id) is None)
    back = await visit(lb, 30)  # within the second: the will on node A is cancelled
    await wait_for(lambda: la.stats["wills_cancelled"] == 1, what="will cancelled")
    assert la.stats["wills_stored"] == 0 and await uplinks(redis, "acme") == []
    back.writer.transport.abort()
    await wait_for(lambda: lb.holder(dev.device_id) is None)
    will_key = f"corem:will:{{{dev.device_id}}}"
    assert await redis.exists(will_key) == 1  # B's will waits (30 s)
    client = await visit(la, 1)  # cancels it: B finds it gone when its delay ends
    assert await redis.exists(will_key) == 0
    client.writer.transport.abort()
    await wait_for(lambda: la.stats["wills_stored"] == 1, timeout=10, what="will stored")
    await asyncio.sleep(0.2)  # let the batch land
    (entry,) = await uplinks(redis, "acme")
    assert entry["kind"] == "state" and json.loads(entry["payload"]) == {"state": "gone"}
    assert json.loads(entry["properties"]) == {"content_type": "application/json"}


async def test_publishes_of_one_read_share_its_time_and_a_will_takes_the_clock(
    mqtt_node, registry, pki, redis
):  # type: ignore[no-untyped-def]
    """``received_at`` is the wall-clock time of the read that carried the PUBLISH (one
    clock call per read, issue 18); a will, stored at the close, takes the clock then."""
    import time

    _node, listener = await mqtt_node(wills_as_uplinks=True)
    dev = await provision_x509(registry, pki, "acme", "hw-times")
    topic = f"devices/{dev.device_id}/up/telemetry"
    client = await session(listener, pki, dev, f"devices/{dev.device_id}/up/state")
    before = time.time()
    # One write, one TLS record: one read on the broker's side.
    await client.send(b"".join(codec.encode_publish(topic, b'{"n":%d}' % i, 0) for i in range(3)))
    await wait_for(lambda: listener.stats["uplinks"] == 3, what="3 stored")
    await asyncio.sleep(0.05)
    await client.send(codec.encode_publish(topic, b'{"n":3}', 0))
    await wait_for(lambda: listener.stats["uplinks"] == 4, what="4 stored")
    await asyncio.sleep(0.05)
    client.writer.transport.abort()
    await wait_for(lambda: listener.stats["wills_stored"] == 1, what="will stored")
    await asyncio.sleep(0.2)  # let the batch land
    entries = await uplinks(redis, "acme")
    assert [json.loads(e["payload"]) for e in entries[:4]] == [{"n": i} for i in range(4)]
    times = [float(e["received_at"]) for e in entries]
    assert before <= times[0] == times[1] == times[2] < times[3] < times[4] <= time.time()
    assert entries[4]["kind"] == "state"
