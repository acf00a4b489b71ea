"""Defects a conformance probe found (issue 13), each on the real listener with real clients."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from corem_ingress.adapters.mqtt import codec
from corem_ingress.adapters.mqtt.codec import PacketType
from tests.mqtt.conftest import (
    RawClient,
    client_ssl,
    connect_packet,
    provision_x509,
    wait_for,
)
from tests.mqtt.test_topics_downlink import cli_downlink, finish, start_sub

pytestmark = pytest.mark.integration


async def _connected(port, pki, dev):  # type: ignore[no-untyped-def]
    client = await RawClient.open(port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id))
    assert await client.read_packet() == b"\x20\x02\x00\x00"
    return client


async def test_qos2_publish_and_its_dup_in_one_write_are_stored_once(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, redis
):
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-q2dup")
    c = await _connected(listener.port, pki, dev)
    topic = f"devices/{dev.device_id}/up/event"
    first = codec.encode_publish(topic, b"once", 2, 5)
    await c.send(first + codec.encode_publish(topic, b"once", 2, 5, dup=True))
    assert await c.read_packet() == codec.encode_ack(PacketType.PUBREC, 5)
    await c.send(codec.encode_ack(PacketType.PUBREL, 5))
    assert await c.read_packet() == codec.encode_ack(PacketType.PUBCOMP, 5)
    entries = await redis.xrange(node.keys.uplink_stream("acme"))
    assert [e[1]["payload"] for e in entries] == ['"once"']
    await c.close()


async def test_qos2_past_the_inflight_window_disconnects(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node(max_inflight=2)
    dev = await provision_x509(registry, pki, "acme", "hw-q2win")
    c = await _connected(listener.port, pki, dev)
    topic = f"devices/{dev.device_id}/up/event"
    for pid in (1, 2):
        await c.send(codec.encode_publish(topic, b"%d" % pid, 2, pid))
        assert await c.read_packet() == codec.encode_ack(PacketType.PUBREC, pid)
    await c.send(codec.encode_publish(topic, b"3", 2, 3))  # a third awaiting PUBREL
    assert await c.closed_by_server()
    entries = await redis.xrange(node.keys.uplink_stream("acme"))
    assert [e[1]["payload"] for e in entries] == ["1", "2"]  # the third is not acknowledged
    from corem_ingress import metrics

    sample = metrics.REGISTRY.get_sample_value(
        "corem_limit_refusals_total", {"transport": "mqtt", "limit": "receive_maximum"}
    )
    assert sample is not None and sample >= 1


async def test_empty_client_id_without_clean_session_gets_connack_2(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-cid")
    c = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await c.send(codec.encode_connect(codec.Connect(4, "", False, 30, None, None)))
    assert await c.read_packet() == b"\x20\x02\x00\x02"
    assert await c.read_packet() is None


async def test_mqisdp_name_with_level_4_is_closed_without_connack(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-mqisdp")
    c = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    cid = dev.device_id.encode()
    body = b"\x00\x06MQIsdp\x04\x02\x00\x1e" + len(cid).to_bytes(2, "big") + cid
    await c.send(bytes((0x10, len(body))) + body)
    assert await c.read_packet() is None  # [MQTT-3.1.2-1]: no CONNACK, just the close
    assert listener.stats["connect_accepted"] == 0


async def test_subscriptions_are_limited_per_connection(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, redis_url
):
    node, listener = await mqtt_node(max_subscriptions=3)
    dev = await provision_x509(registry, pki, "acme", "hw-subs")
    down = f"devices/{dev.device_id}/down"
    extra = ["-t", f"{down}/+", "-t", f"{down}/b", "-t", f"{down}/c", "-t", f"{down}/d"]
    proc, line = await start_sub(pki, dev, listener.port, f"{down}/a", *extra, "-C", "1")
    # mosquitto_sub sends one SUBSCRIBE with five filters: the first three granted, the
    # rest refused with 0x80 each; the connection stays up and delivery still works.
    assert line.strip().endswith(": 1, 1, 1, 128, 128"), line
    assert listener.stats["subscriptions_over_limit"] == 2
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    await cli_downlink(redis_url, "acme", dev.device_id, "x", "via-wildcard")
    code, out = await finish(proc)
    assert code == 0 and f"{down}/x via-wildcard" in out, out


def _ends_with(port: int, ctx: ssl.SSLContext, device_id: str, then: bytes) -> str:
    """Connect (blocking ssl socket: it tells a TLS close_notify from a cut connection), send
    ``then`` after the CONNACK, and say how the server ended the connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(connect_packet(device_id))
        assert tls.recv(4) == b"\x20\x02\x00\x00"
        tls.sendall(then)
        try:
            while tls.recv(65536):
                pass
        except ssl.SSLEOFError:
            return "cut without close_notify"
        return "close_notify"


@pytest.mark.parametrize("why", ["acl", "malformed"])
async def test_a_close_for_the_devices_fault_still_ends_tls_cleanly(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, why: str
):
    """A device closed for its own fault (publishing to another device's topic, a malformed
    packet) gets TLS close_notify like a revoked one: its stack reports "closed by the
    broker", not "unexpected eof" (mosquitto_pub said the latter)."""
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", f"hw-cn-{why}")
    then = (
        codec.encode_publish("devices/someone-else/up/event", b"x", 1, 1)
        if why == "acl"
        else b"\xf0\x00"  # reserved packet type 15
    )
    ending = await asyncio.to_thread(
        _ends_with, listener.port, client_ssl(pki, dev.cert), dev.device_id, then
    )
    assert ending == "close_notify"
