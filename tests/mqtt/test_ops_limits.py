"""MQTT limits and metrics on the real listener with real TLS clients (issue 8).

* failed-authentication throttling per source IP: CONNACK 5 on an open connection, closed
  before any TLS work on a new one; lifted after ``auth_block_s``;
* per-tenant connection limit: CONNACK 3; a device's take-over keeps its own slot;
* per-device message rate: QoS 0 dropped, QoS 1 closes the connection without PUBACK
  (the client re-sends after reconnecting: nothing acknowledged is lost).

The node's clock is the test's (``clock``): blocks end and buckets refill only when the
test advances it.
"""

from __future__ import annotations

import pytest

from corem_ingress import metrics
from corem_ingress.adapters import mqtt
from corem_ingress.adapters.mqtt import codec
from tests.mqtt.conftest import (
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    provision_x509,
    wait_for,
)

pytestmark = pytest.mark.integration

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_UNAVAILABLE = b"\x20\x02\x00\x03"
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def connack(port, pki, cert, client_id):  # type: ignore[no-untyped-def]
    client = await RawClient.open(port, client_ssl(pki, cert))
    await client.send(connect_packet(client_id))
    return client, await client.read_packet()


async def test_failed_auth_throttle_per_source_ip(start_node, registry, pki, clock):  # type: ignore[no-untyped-def]
    node = await start_node(
        [mqtt.build],
        clock=clock,
        mqtt=mqtt_section(pki),
        limits={"auth_fail_max": 3, "auth_fail_window_s": 60, "auth_block_s": 30},
    )
    (listener,) = node.listeners
    port = listener.port
    good = await provision_x509(registry, pki, "thr", "hw-ok")
    stranger = pki.device("thr-stranger")  # signed by the CA, never provisioned
    refused0 = sample("corem_limit_refusals_total", transport="mqtt", limit="auth_throttle")
    unknown0 = sample("corem_auth_failures_total", transport="mqtt", reason="unknown_or_revoked")
    handshakes0 = sample("corem_handshakes_total", transport="mqtt", outcome="ok")

    # A good device's connection, TLS done, CONNECT not sent yet.
    early = await RawClient.open(port, client_ssl(pki, good.cert))
    for _ in range(3):
        client, packet = await connack(port, pki, stranger, "stranger")
        assert packet == CONNACK_NOT_AUTHORIZED
        await client.close()
    assert node.services.access.throttle.blocks == 1

    # Blocked: a CONNECT on the already open connection gets CONNACK 5 without a lookup ...
    await early.send(connect_packet(good.device_id))
    assert await early.read_packet() == CONNACK_NOT_AUTHORIZED
    await early.close()
    # ... and a new connection is closed before the TLS handshake, even with a good cert.
    with pytest.raises(OSError):
        await RawClient.open(port, client_ssl(pki, good.cert))
    assert listener.stats["throttled"] == 2
    assert (
        sample("corem_limit_refusals_total", transport="mqtt", limit="auth_throttle") - refused0
        == 2
    )
    assert (
        sample("corem_auth_failures_total", transport="mqtt", reason="unknown_or_revoked")
        - unknown0
        == 3
    )

    clock.advance(31)  # the block ends
    client, packet = await connack(port, pki, good.cert, good.device_id)
    assert packet == CONNACK_OK
    await client.close()
    assert sample("corem_handshakes_total", transport="mqtt", outcome="ok") - handshakes0 >= 5


async def test_tls_handshake_failures_count_and_throttle(start_node, pki, clock, tmp_path):  # type: ignore[no-untyped-def]
    from corem_ingress import devcerts

    node = await start_node(
        [mqtt.build],
        clock=clock,
        mqtt=mqtt_section(pki),
        limits={"auth_fail_max": 2, "auth_block_s": 30},
    )
    (listener,) = node.listeners
    failed0 = sample("corem_handshakes_total", transport="mqtt", outcome="failed")
    # A certificate from a foreign CA: the TLS handshake fails (client_auth required).
    foreign = devcerts.issue(devcerts.make_ca("foreign"), "foreign-dev")
    foreign.write(tmp_path / "f.pem", tmp_path / "f.key")
    ctx = client_ssl(pki, None)
    ctx.load_cert_chain(str(tmp_path / "f.pem"), str(tmp_path / "f.key"))
    for _ in range(2):
        try:
            client = await RawClient.open(listener.port, ctx)
        except OSError:
            continue
        # TLS 1.3: the client learns of the refusal on its first read.
        await client.send(connect_packet("foreign"))
        assert await client.read_packet() is None
        await client.close()
    await wait_for(lambda: node.services.access.throttle.blocks == 1)
    assert sample("corem_handshakes_total", transport="mqtt", outcome="failed") - failed0 == 2


async def test_per_tenant_connection_limit(start_node, registry, pki):  # type: ignore[no-untyped-def]
    node = await start_node(
        [mqtt.build], mqtt=mqtt_section(pki), limits={"per_tenant_max_connections": 2}
    )
    (listener,) = node.listeners
    port = listener.port
    a1, a2, a3 = [await provision_x509(registry, pki, "tl-a", f"hw-{i}") for i in range(3)]
    b1 = await provision_x509(registry, pki, "tl-b", "hw-b")
    refused0 = sample("corem_limit_refusals_total", transport="mqtt", limit="tenant_connections")
    opened0 = sample("corem_sessions_opened_total", transport="mqtt", tenant="tl-a")

    c1, p1 = await connack(port, pki, a1.cert, a1.device_id)
    c2, p2 = await connack(port, pki, a2.cert, a2.device_id)
    assert (p1, p2) == (CONNACK_OK, CONNACK_OK)
    c3, p3 = await connack(port, pki, a3.cert, a3.device_id)
    assert p3 == CONNACK_UNAVAILABLE  # the tenant is at its limit on this node
    assert await c3.closed_by_server()
    cb, pb = await connack(port, pki, b1.cert, b1.device_id)
    assert pb == CONNACK_OK  # another tenant is not affected

    # The same device reconnecting takes over its own slot (the old connection goes).
    c1b, p1b = await connack(port, pki, a1.cert, a1.device_id)
    assert p1b == CONNACK_OK
    assert await c1.closed_by_server()
    assert node.services.access.tenant_connections.count("tl-a") == 2

    await c2.close()
    await wait_for(lambda: node.services.access.tenant_connections.count("tl-a") == 1)
    c3, p3 = await connack(port, pki, a3.cert, a3.device_id)
    assert p3 == CONNACK_OK
    assert (
        sample("corem_limit_refusals_total", transport="mqtt", limit="tenant_connections")
        - refused0
        == 1
    )
    assert sample("corem_sessions_opened_total", transport="mqtt", tenant="tl-a") - opened0 == 4
    for c in (c1b, c3, cb):
        await c.close()
    await wait_for(lambda: len(node.services.access.tenant_connections) == 0)


async def test_per_device_message_rate(start_node, registry, pki, redis, clock):  # type: ignore[no-untyped-def]
    node = await start_node(
        [mqtt.build],
        clock=clock,
        mqtt=mqtt_section(pki),
        limits={"per_device_msgs_per_s": 1.0, "per_device_burst": 3},
    )
    (listener,) = node.listeners
    dev = await provision_x509(registry, pki, "rl", "hw-r")
    topic = f"devices/{dev.device_id}/up/telemetry"
    refused0 = sample("corem_limit_refusals_total", transport="mqtt", limit="device_rate")
    ok0 = sample("corem_uplinks_total", transport="mqtt", outcome="ok")
    lat0 = sample("corem_uplink_append_seconds_count", transport="mqtt")

    client, packet = await connack(listener.port, pki, dev.cert, dev.device_id)
    assert packet == CONNACK_OK
    for pid in (1, 2, 3):  # the burst
        await client.send(codec.encode_publish(topic, b'{"n":%d}' % pid, 1, pid))
        assert await client.read_packet() == b"\x40\x02\x00" + bytes((pid,))
    # QoS 0 over the rate: dropped, the connection stays.
    await client.send(codec.encode_publish(topic, b'{"n":"q0"}', 0))
    await client.send(b"\xc0\x00")
    assert await client.read_packet() == b"\xd0\x00"
    # QoS 1 over the rate: not stored, no PUBACK, connection closed.
    await client.send(codec.encode_publish(topic, b'{"n":4}', 1, 4))
    assert await client.closed_by_server()
    assert listener.stats["rate_limited"] == 2
    assert [f["payload"] for _, f in await redis.xrange("corem:uplink:{rl}")] == [
        '{"n":1}',
        '{"n":2}',
        '{"n":3}',
    ]

    clock.advance(2.0)  # two tokens back: the client reconnects and re-sends
    client, packet = await connack(listener.port, pki, dev.cert, dev.device_id)
    assert packet == CONNACK_OK
    await client.send(codec.encode_publish(topic, b'{"n":4}', 1, 4, dup=True))
    assert await client.read_packet() == b"\x40\x02\x00\x04"
    await client.close()
    assert await redis.xlen("corem:uplink:{rl}") == 4
    assert (
        sample("corem_limit_refusals_total", transport="mqtt", limit="device_rate") - refused0 == 2
    )
    assert sample("corem_uplinks_total", transport="mqtt", outcome="ok") - ok0 == 4
    # One latency observation per batch (here each message was its own batch).
    assert 1 <= sample("corem_uplink_append_seconds_count", transport="mqtt") - lat0 <= 4


async def test_oversized_packet_is_counted(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(max_packet_size=1024)
    dev = await provision_x509(registry, pki, "big", "hw-big")
    before = sample("corem_limit_refusals_total", transport="mqtt", limit="max_size")
    client, packet = await connack(listener.port, pki, dev.cert, dev.device_id)
    assert packet == CONNACK_OK
    topic = f"devices/{dev.device_id}/up/telemetry"
    await client.send(codec.encode_publish(topic, b"x" * 2000, 1, 1))
    assert await client.closed_by_server()
    assert sample("corem_limit_refusals_total", transport="mqtt", limit="max_size") - before == 1
