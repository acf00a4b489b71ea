"""Persistent sessions and the offline downlink queue (issue 13): two broker nodes sharing
one real redis-server; mosquitto_sub -c, paho-mqtt v5 and a raw client as devices; the
downlink sent as the API and the CLI send it (``send_downlink``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from corem_ingress.adapters.mqtt import codec
from corem_ingress.store.downlinks import send_downlink
from tests.mqtt.conftest import (
    MOSQUITTO_SUB,
    RawClient,
    client_ssl,
    provision_x509,
    run,
    tls_args,
    wait_for,
)
from tests.mqtt.test_mqtt5 import Paho5

pytestmark = pytest.mark.integration


async def downlink(registry, dev, payload, *, qos=1, kind="config", **kw):  # type: ignore[no-untyped-def]
    """Send as the admin API and the CLI do; returns their answer."""
    kw.setdefault("reply_wait_s", 2.0)
    return await send_downlink(
        registry,
        dev.tenant,
        dev.device_id,
        kind,
        payload,
        qos=qos,
        actor="test",
        now=kw.pop("now", time.time()),
        **kw,
    )


def connect(client_id: str, *, clean: bool, v5_expiry: int | None = None) -> bytes:
    props = codec.EMPTY
    level = 4
    if v5_expiry is not None:
        from corem_ingress.adapters.mqtt.properties import Prop
        from corem_ingress.adapters.mqtt.properties import Properties as P

        level, props = 5, P({Prop.SESSION_EXPIRY_INTERVAL: v5_expiry}, ())
    return codec.encode_connect(
        codec.Connect(level, client_id, clean, 60, None, None, properties=props)
    )


async def raw_session(port, pki, dev, *, clean=False):  # type: ignore[no-untyped-def]
    """A raw 3.1.1 client: connected; returns (client, CONNACK bytes)."""
    raw = await RawClient.open(port, client_ssl(pki, dev.cert))
    await raw.send(connect(dev.device_id, clean=clean))
    connack = await raw.read_packet()
    assert connack is not None
    return raw, connack


def publish_of(packet: bytes) -> tuple[bool, int, bytes]:
    """(DUP, packet id, payload) of a QoS 1 PUBLISH without properties."""
    assert packet[0] >> 4 == codec.PacketType.PUBLISH and (packet[0] >> 1) & 3 == 1, packet
    framed = codec.frame(packet, 1 << 20)
    assert framed is not None
    body = packet[framed[1] :]
    tlen = int.from_bytes(body[:2], "big")
    pid = int.from_bytes(body[2 + tlen : 4 + tlen], "big")
    return bool(packet[0] & 0b1000), pid, body[4 + tlen :]


async def queue_len(redis, dev) -> int:  # type: ignore[no-untyped-def]
    return int(await redis.llen(f"corem:dlq:{{{dev.device_id}}}"))


@pytest.fixture
async def two_nodes(mqtt_node):  # type: ignore[no-untyped-def]
    (_a, la), (_b, lb) = await mqtt_node(), await mqtt_node()
    return la, lb


async def test_mosquitto_sub_persistent_sleeps_and_gets_it_once_on_the_other_node(
    two_nodes, registry, pki, redis
):  # type: ignore[no-untyped-def]
    a, b = two_nodes
    dev = await provision_x509(registry, pki, "acme", "hw-sleepy")
    sub = [MOSQUITTO_SUB, *tls_args(pki, dev), "-i", dev.device_id, "-c", "-q", "1", "-v"]
    topic = ["-t", f"devices/{dev.device_id}/down/#"]
    # First visit on node A: subscribes, leaves (-W: exits after 1 s, the session stays).
    code, out = await run([*sub, "-p", str(a.port), *topic, "-W", "1"])
    assert code in (0, 27), out  # 27: mosquitto's "timed out" exit
    await wait_for(lambda: a.holder(dev.device_id) is None)
    sent = await downlink(registry, dev, {"rate": 7})
    assert sent["state"] == "queued" and sent["queue_position"] == 1, sent
    # Back on node B, no SUBSCRIBE (-t is still required by mosquitto_sub: it re-subscribes
    # the same filter; the stored subscription alone would do, see the raw test below).
    code, out = await run([*sub, "-p", str(b.port), *topic, "-C", "1", "-W", "5"])
    assert code == 0 and out.count('{"rate":7}') == 1, out
    await wait_for(lambda: b.holder(dev.device_id) is None)
    await wait_for_queue(redis, dev, 0)  # its PUBACK (just before DISCONNECT) removed it
    # Once: the next visit gets nothing.
    code, out = await run([*sub, "-p", str(a.port), *topic, "-W", "1"])
    assert '{"rate":7}' not in out, out


async def test_raw_redelivery_with_dup_after_disconnect_without_puback(
    two_nodes, registry, pki, redis
):  # type: ignore[no-untyped-def]
    a, b = two_nodes
    dev = await provision_x509(registry, pki, "acme", "hw-dup")
    raw, connack = await raw_session(a.port, pki, dev)
    assert connack == b"\x20\x02\x00\x00"  # new session
    await raw.send(codec.encode_subscribe(1, [(f"devices/{dev.device_id}/down/#", 1)]))
    assert await raw.read_packet() == b"\x90\x03\x00\x01\x01"
    await raw.close()
    await wait_for(lambda: a.holder(dev.device_id) is None)
    first = await downlink(registry, dev, "one")
    second = await downlink(registry, dev, "two")
    assert (first["state"], second["state"]) == ("queued", "queued")
    assert (first["queue_position"], second["queue_position"]) == (1, 2)

    # Node B: session present, subscriptions restored without SUBSCRIBE, both in order.
    raw, connack = await raw_session(b.port, pki, dev)
    assert connack == b"\x20\x02\x01\x00"
    got = [publish_of(await raw.read_packet() or b"") for _ in range(2)]
    assert [(dup, payload) for dup, _pid, payload in got] == [(False, b"one"), (False, b"two")]
    # PUBACK only the first, then drop the connection.
    await raw.send(codec.encode_ack(codec.PacketType.PUBACK, got[0][1]))
    await wait_for_queue(redis, dev, 1)
    await raw.close()
    await wait_for(lambda: b.holder(dev.device_id) is None)

    # Node A again: only the unacknowledged one, with DUP=1; after its PUBACK the queue is empty.
    raw, connack = await raw_session(a.port, pki, dev)
    assert connack == b"\x20\x02\x01\x00"
    dup, pid, payload = publish_of(await raw.read_packet() or b"")
    assert (dup, payload) == (True, b"two")
    await raw.send(codec.encode_ack(codec.PacketType.PUBACK, pid))
    await wait_for_queue(redis, dev, 0)
    # A live persistent session: a new downlink is "delivered" (written), kept until PUBACK.
    live = await downlink(registry, dev, "three")
    assert live["state"] == "delivered", live
    dup, pid, payload = publish_of(await raw.read_packet() or b"")
    assert (dup, payload) == (False, b"three")
    assert await queue_len(redis, dev) == 1
    await raw.send(codec.encode_ack(codec.PacketType.PUBACK, pid))
    await wait_for_queue(redis, dev, 0)
    await raw.close()


async def wait_for_queue(redis, dev, n: int) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(10):
        while await queue_len(redis, dev) != n:
            await asyncio.sleep(0.02)


async def test_take_over_from_another_node_ends_the_old_connection(two_nodes, registry, pki, redis):  # type: ignore[no-untyped-def]
    a, b = two_nodes
    dev = await provision_x509(registry, pki, "acme", "hw-take")
    old, _ = await raw_session(a.port, pki, dev)
    new, connack = await raw_session(b.port, pki, dev)
    assert connack[:2] == b"\x20\x02"
    assert await old.closed_by_server(10)
    assert a.stats["takeovers"] == 1
    owner = await redis.hget(f"corem:sess:{{{dev.device_id}}}", "owner")
    assert owner.startswith(b.services.node_id + "|")
    await new.close()


async def test_clean_session_discards_and_drops_are_reported(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-drop")
    never = await provision_x509(registry, pki, "acme", "hw-never")
    assert (await downlink(registry, never, "x"))["reason"] == "no_session"
    raw, _ = await raw_session(listener.port, pki, dev)
    await raw.send(codec.encode_subscribe(1, [(f"devices/{dev.device_id}/down/config", 1)]))
    assert await raw.read_packet() == b"\x90\x03\x00\x01\x01"
    await raw.close()
    await wait_for(lambda: listener.holder(dev.device_id) is None)
    assert (await downlink(registry, dev, "q0", qos=0))["reason"] == "qos0_offline"
    # MQTT queues only what the stored session is subscribed to: another kind is dropped
    # and says so (it would be dropped at the reconnect anyway).
    other = await downlink(registry, dev, "reboot", kind="command")
    assert (other["state"], other["reason"]) == ("dropped", "not_subscribed")
    assert await queue_len(redis, dev) == 0
    # Queue of 2: the third pushes the oldest out, and says so.
    one = await downlink(registry, dev, "1", queue_max=2)
    await downlink(registry, dev, "2", queue_max=2)
    three = await downlink(registry, dev, "3", queue_max=2)
    assert three["state"] == "queued" and three["queue_position"] == 2
    assert three["dropped_oldest"] == [one["message_id"]]
    # Expired while queued: never delivered.
    old = await downlink(registry, dev, "late", now=time.time() - 10, expiry_s=5)
    assert old["state"] == "queued"
    assert await queue_len(redis, dev) == 3
    # CleanSession 1: the stored session and its queue are gone; nothing is delivered.
    raw, connack = await raw_session(listener.port, pki, dev, clean=True)
    assert connack == b"\x20\x02\x00\x00"
    assert await queue_len(redis, dev) == 0
    await raw.close()
    await wait_for(lambda: listener.holder(dev.device_id) is None)
    assert await redis.exists(f"corem:sess:{{{dev.device_id}}}") == 0


async def test_expired_downlink_is_not_delivered_and_ttl_set(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(session_expiry_max_s=600)
    dev = await provision_x509(registry, pki, "acme", "hw-exp")
    raw, _ = await raw_session(listener.port, pki, dev)
    await raw.send(codec.encode_subscribe(1, [(f"devices/{dev.device_id}/down/#", 1)]))
    assert await raw.read_packet() == b"\x90\x03\x00\x01\x01"
    await raw.close()
    await wait_for(lambda: listener.holder(dev.device_id) is None)
    ttl = await redis.ttl(f"corem:sess:{{{dev.device_id}}}")
    assert 0 < ttl <= 600  # kept for mqtt.session_expiry_max_s once disconnected
    await downlink(registry, dev, "late", now=time.time() - 10, expiry_s=5)
    await downlink(registry, dev, "fresh")
    raw, connack = await raw_session(listener.port, pki, dev)
    assert connack == b"\x20\x02\x01\x00"
    _dup, pid, payload = publish_of(await raw.read_packet() or b"")
    assert payload == b"fresh"
    await raw.send(codec.encode_ack(codec.PacketType.PUBACK, pid))
    await wait_for_queue(redis, dev, 0)
    await raw.close()


async def test_paho_v5_clean_start_0_session_expiry_on_the_other_node(
    two_nodes, registry, pki, redis
):  # type: ignore[no-untyped-def]
    a, b = two_nodes
    dev = await provision_x509(registry, pki, "acme", "hw-paho5")

    async def visit(port: int, expiry: int) -> Any:
        c = Paho5(pki, cert=dev.cert, client_id=dev.device_id)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        await asyncio.to_thread(
            c.client.connect, "127.0.0.1", port, 30, clean_start=False, properties=props
        )
        c.client.loop_start()
        assert await asyncio.to_thread(c.connected.wait, 10), "no CONNACK"
        return c

    c = await visit(a.port, 3600)
    assert c.connack is not None and c.connack[0] == 0
    c.client.subscribe(f"devices/{dev.device_id}/down/#", 1)
    assert await asyncio.to_thread(c.subscribed.wait, 10)
    await c.stop()
    await wait_for(lambda: a.holder(dev.device_id) is None)
    sent = await downlink(registry, dev, "v5-offline", expiry_s=600)
    assert sent["state"] == "queued"
    c = await visit(b.port, 3600)
    await wait_for(lambda: len(c.messages) >= 1)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    (msg,) = c.messages
    assert msg.payload == b"v5-offline" and msg.qos == 1
    assert 0 < msg.properties.MessageExpiryInterval <= 600
    await wait_for_queue(redis, dev, 0)
    await c.stop()
    assert paho.MQTTv5  # the v5 client, as imported


async def test_v5_session_expiry_above_the_max_is_clamped_in_connack(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(session_expiry_max_s=120)
    dev = await provision_x509(registry, pki, "acme", "hw-clamp")
    raw = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await raw.send(connect(dev.device_id, clean=False, v5_expiry=0xFFFFFFFF))
    connack = await raw.read_packet()
    assert connack is not None and connack[2:4] == b"\x00\x00"
    # Session Expiry Interval (0x11) = 120 among the CONNACK properties.
    assert b"\x11\x00\x00\x00\x78" in connack
    await raw.close()
