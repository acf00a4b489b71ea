"""Limits and bad input on the real listener: each closes that connection only."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from corem_ingress import app
from corem_ingress.adapters import mqtt
from corem_ingress.adapters.mqtt import codec
from corem_ingress.core.psk import KeyRing
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.conftest import KEK_LINE, make_config
from tests.mqtt.conftest import (
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    provision_x509,
    wait_for,
)

pytestmark = pytest.mark.integration


async def connected(port, pki, dev, **kw):  # type: ignore[no-untyped-def]
    client = await RawClient.open(port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id, **kw))
    assert await client.read_packet() == b"\x20\x02\x00\x00"
    return client


async def assert_broker_alive(port, pki, dev):  # type: ignore[no-untyped-def]
    client = await connected(port, pki, dev)
    await client.send(b"\xc0\x00")
    assert await client.read_packet() == b"\xd0\x00"
    await client.close()


async def test_bad_bytes_close_that_connection_only(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(max_packet_size=1024)
    dev = await provision_x509(registry, pki, "acme", "hw-g")
    bystander = await connected(listener.port, pki, dev)
    other = await provision_x509(registry, pki, "acme", "hw-g2")

    # Not TLS at all.
    plain = await RawClient.open(listener.port, None)
    await plain.send(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00" + bytes(range(256)))
    assert await plain.closed_by_server()
    # TLS, then garbage instead of CONNECT.
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)), b"\xc0\x00"):
        c = await RawClient.open(listener.port, client_ssl(pki, other.cert))
        await c.send(junk)
        assert await c.closed_by_server()
    # Garbage after a good CONNECT.
    c = await connected(listener.port, pki, other)
    await c.send(b"\xf0\x00")  # reserved packet type 15
    assert await c.closed_by_server()
    # Oversized: closed as soon as the length is known.
    c = await connected(listener.port, pki, other)
    big = codec.encode_publish(f"devices/{other.device_id}/up/event", b"x" * 5000, 0)
    await c.send(big[:64])
    assert await c.closed_by_server()
    # A malformed remaining length.
    c = await connected(listener.port, pki, other)
    await c.send(b"\x30\xff\xff\xff\xff\x01")
    assert await c.closed_by_server()

    assert listener.stats["tls_failures"] >= 1 and listener.stats["protocol_closes"] >= 6
    # The first device never noticed.
    await bystander.send(b"\xc0\x00")
    assert await bystander.read_packet() == b"\xd0\x00"
    await bystander.close()
    await assert_broker_alive(listener.port, pki, other)


async def test_connect_timeout_and_keepalive(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(connect_timeout_s=0.5, max_keepalive_s=60)
    dev = await provision_x509(registry, pki, "acme", "hw-t")
    # TCP only, never a TLS ClientHello.
    tcp = await RawClient.open(listener.port, None)
    assert await tcp.closed_by_server(timeout=10)
    # TLS done, never a CONNECT.
    silent = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    assert await silent.closed_by_server(timeout=10)
    # keep-alive 1 s, then silence: closed after 1.5 s.
    idle = await connected(listener.port, pki, dev, keepalive=1)
    assert await idle.closed_by_server(timeout=10)
    await assert_broker_alive(listener.port, pki, dev)


async def test_many_qos1_publishes_are_all_stored_and_acked_in_order(
    mqtt_node, registry, pki, redis
):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(max_inflight=4)
    dev = await provision_x509(registry, pki, "acme", "hw-q")
    c = await connected(listener.port, pki, dev)
    topic = f"devices/{dev.device_id}/up/telemetry"
    n = 60
    await c.send(b"".join(codec.encode_publish(topic, b"%d" % i, 1, i + 1) for i in range(n)))
    acks = [await c.read_packet() for _ in range(n)]
    assert acks == [codec.encode_ack(codec.PacketType.PUBACK, i + 1) for i in range(n)]
    entries = await redis.xrange("corem:uplink:{acme}")
    assert [e[1]["payload"] for e in entries] == [str(i) for i in range(n)]
    await c.close()


async def test_second_connection_takes_over(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-x")
    first = await connected(listener.port, pki, dev)
    second = await connected(listener.port, pki, dev)
    assert await first.closed_by_server()
    await second.send(b"\xc0\x00")
    assert await second.read_packet() == b"\xd0\x00"
    await second.close()
    assert listener.stats["takeovers"] == 1


async def test_no_puback_when_redis_is_down(pki, kek_env):  # type: ignore[no-untyped-def]
    """Our own redis-server: stopped mid-session, the next QoS 1 publish gets no PUBACK."""
    server = await asyncio.to_thread(EmbeddedRedis().start)
    node = None
    admin = app.redis_client(server.url)
    try:
        registry = Registry(
            admin,
            KeySchema("corem"),
            keyring=KeyRing.parse(KEK_LINE),
            api_key_overlap=60,
            api_key_overlap_max=3600,
        )
        dev = await provision_x509(registry, pki, "acme", "hw-r")
        cfg = make_config(server.url, mqtt=mqtt_section(pki))
        cfg.redis.socket_timeout_s = 1.0
        node = app.Node(cfg, listener_factories=[mqtt.build])
        await node.start()
        (listener,) = node.listeners
        c = await connected(listener.port, pki, dev)
        topic = f"devices/{dev.device_id}/up/telemetry"
        await c.send(codec.encode_publish(topic, b"stored", 1, 1))
        assert await c.read_packet() == codec.encode_ack(codec.PacketType.PUBACK, 1)
        assert await admin.xlen("corem:uplink:{acme}") == 1

        await asyncio.to_thread(server.close)  # Redis goes away
        await c.send(codec.encode_publish(topic, b"lost", 1, 2))
        # Not stored, so never acknowledged: the broker closes and the client re-sends later.
        assert await c.read_packet() is None
        assert listener.stats["store_failures"] == 1
        assert listener.stats["uplinks"] == 1
        await wait_for(lambda: not node.services.sessions.registry.sessions())
    finally:
        if node is not None:
            await node.stop()
        with contextlib.suppress(Exception):
            await admin.aclose()
        await asyncio.to_thread(server.close)


async def test_qos0_burst_is_stored_in_full(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    """Thousands of packets in one write: split across TLS records and socket reads."""
    _node, listener = await mqtt_node(max_inflight=8)
    dev = await provision_x509(registry, pki, "acme", "hw-burst")
    c = await connected(listener.port, pki, dev)
    topic = f"devices/{dev.device_id}/up/telemetry"
    n = 3000
    await c.send(b"".join(codec.encode_publish(topic, b"%d" % i, 0) for i in range(n)))
    await c.send(b"\xc0\x00")
    assert await c.read_packet() == b"\xd0\x00"
    await wait_for(lambda: listener.stats["uplinks"] == n, timeout=60)
    entries = await redis.xrange("corem:uplink:{acme}")
    assert [e[1]["payload"] for e in entries] == [str(i) for i in range(n)]
    await c.close()


async def test_payload_that_is_json_only_to_python_is_stored_as_text(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, redis
) -> None:
    """Issue 12 §4 on MQTT: a lone surrogate escape is acknowledged and kept as its text, so
    every consumer of the stream still reads valid UTF-8 JSON."""
    import json as json_

    from corem_ingress.adapters.mqtt import codec
    from tests.mqtt.conftest import RawClient, client_ssl, connect_packet, provision_x509

    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-sur")
    client = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id))
    assert await client.read_packet() == b"\x20\x02\x00\x00"
    topic = f"devices/{dev.device_id}/up/telemetry"
    await client.send(codec.encode_publish(topic, b'{"v": "\\ud800"}', 1, 1))
    assert await client.read_packet() == codec.encode_ack(codec.PacketType.PUBACK, 1)
    await client.close()
    (entry,) = await redis.xrange(node.keys.uplink_stream("acme"))
    fields = entry[1]
    assert fields["payload_encoding"] == "text"
    assert json_.loads(fields["payload"]) == '{"v": "\\ud800"}'
    # What `corem-ingress tail | jq` reads: valid UTF-8 JSON.
    json_.dumps(json_.loads(fields["payload"]), ensure_ascii=False).encode("utf-8")
