"""PROXY protocol on the MQTT listener, with hand-written v1/v2 headers on real sockets:
the throttle keys on the client the header names, a trusted proxy's own address is never
blocked, and headers from elsewhere (or missing ones, where required) are refused."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest

from corem_ingress import metrics
from corem_ingress.core.proxy_protocol import v2_header
from tests.mqtt.conftest import RawClient, client_ssl, connect_packet, provision_key

pytestmark = pytest.mark.integration

LB = "127.0.0.1"  # the trusted proxy in these tests
OUTSIDER = "127.0.0.2"  # any other address (loopback: Linux routes all of 127/8 here)
CONNACK_OK = b"\x20\x02\x00\x00"


async def open_raw(port: int, *, source: str = LB) -> tuple[asyncio.StreamReader, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def proxied(port: int, header: bytes, ctx: ssl.SSLContext, *, source: str = LB) -> RawClient:
    """A connection as a load balancer makes it: header first, then the client's TLS."""
    reader, writer = await open_raw(port, source=source)
    writer.write(header)
    await writer.drain()
    await writer.start_tls(ctx, server_hostname="localhost")
    return RawClient(reader, writer)


async def connack(client: RawClient, device_id: str, password: str) -> bytes | None:
    await client.send(connect_packet(device_id, password=password))
    packet = await client.read_packet()
    await client.close()
    return packet


async def closed_before_tls(port: int, data: bytes, *, source: str = LB) -> bool:
    """Send raw bytes (no TLS); True if the server closes without answering."""
    reader, writer = await open_raw(port, source=source)
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    try:
        async with asyncio.timeout(10):
            got = await reader.read(100)
    except ConnectionError:
        got = b""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return got == b""


def v2(client_ip: str, port: int = 40000) -> bytes:
    return v2_header((client_ip, port), ("127.0.0.1", 8883))


def refusals() -> float:
    return (
        metrics.REGISTRY.get_sample_value("corem_proxy_refusals_total", {"transport": "mqtt"}) or 0
    )


@pytest.fixture
async def proxied_node(start_node, pki):  # type: ignore[no-untyped-def]
    from corem_ingress.adapters import mqtt
    from tests.mqtt.conftest import mqtt_section

    node = await start_node(
        [mqtt.build],
        mqtt=mqtt_section(pki, client_auth="optional", proxy_protocol="required"),
        proxy={"trusted_cidrs": [f"{LB}/32"]},
        limits={"auth_fail_max": 3, "auth_fail_window_s": 60, "auth_block_s": 300},
    )
    (listener,) = node.listeners
    return node, listener


async def test_throttle_keys_on_the_client_the_header_names(proxied_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = proxied_node
    port = listener.port
    ctx = client_ssl(pki, None)
    dev = await provision_key(registry, "acme", "hw-p1")
    assert dev.api_key is not None
    wrong = "sk_live_" + "C" * 42 + "A"
    attacker, neighbour = "198.51.100.66", "203.0.113.10"
    # Valid v2 header: the device gets in.
    assert await connack(await proxied(port, v2(neighbour), ctx), dev.device_id, dev.api_key) == (
        CONNACK_OK
    )
    # The attacker, behind the same load balancer, fails three times and is blocked...
    for _ in range(3):
        reply = await connack(await proxied(port, v2(attacker), ctx), dev.device_id, wrong)
        assert reply is not None and reply[3] in (4, 5)
    assert await closed_before_tls(port, v2(attacker) + b"\x16\x03\x01")
    assert listener.stats["throttled"] >= 1
    # ...while the neighbour (another address through the same proxy) is not, and neither
    # is the proxy's own address: v1 (as nginx sends it) and LOCAL both still work.
    assert await connack(await proxied(port, v2(neighbour), ctx), dev.device_id, dev.api_key) == (
        CONNACK_OK
    )
    v1 = f"PROXY TCP4 {neighbour} 127.0.0.1 40001 8883\r\n".encode()
    assert await connack(await proxied(port, v1, ctx), dev.device_id, dev.api_key) == CONNACK_OK
    local = v2_header(None, ("0.0.0.0", 0))
    assert await connack(await proxied(port, local, ctx), dev.device_id, dev.api_key) == CONNACK_OK
    assert _node.services.access.throttle.blocked_until(LB, _node.services.clock()) is None


async def test_bad_or_missing_headers_are_refused(proxied_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = proxied_node
    port = listener.port
    before = refusals()
    # A trusted proxy that sends no header, where the listener requires one.
    assert await closed_before_tls(port, b"\x16\x03\x01\x00\x05hello")
    # Malformed: an IPv4 block cut short (declared length 4).
    bad = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2))[:14] + b"\x00\x04" + bytes(4)
    assert await closed_before_tls(port, bad)
    # A header from an address that is not a trusted proxy: a client choosing its address.
    assert await closed_before_tls(port, v2("192.0.2.77"), source=OUTSIDER)
    assert await closed_before_tls(
        port, b"PROXY TCP4 192.0.2.77 127.0.0.1 1 2\r\n", source=OUTSIDER
    )
    assert refusals() - before == 4
    assert listener.stats["proxy_refused"] == 4
    # The same outsider connecting directly (no header) is an ordinary client.
    dev = await provision_key(registry, "acme", "hw-p2")
    assert dev.api_key is not None
    reader, writer = await open_raw(port, source=OUTSIDER)
    await writer.start_tls(client_ssl(pki, None), server_hostname="localhost")
    assert await connack(RawClient(reader, writer), dev.device_id, dev.api_key) == CONNACK_OK


async def test_truncated_header_is_closed_by_the_connect_timeout(start_node, pki):  # type: ignore[no-untyped-def]
    from corem_ingress.adapters import mqtt
    from tests.mqtt.conftest import mqtt_section

    node = await start_node(
        [mqtt.build],
        mqtt=mqtt_section(
            pki, client_auth="optional", proxy_protocol="optional", connect_timeout_s=0.5
        ),
        proxy={"trusted_cidrs": [f"{LB}/32"]},
    )
    (listener,) = node.listeners
    reader, writer = await open_raw(listener.port)
    writer.write(v2("192.0.2.1")[:20])  # signature and part of the address block
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read(100) == b""
    writer.close()
    # Optional: a trusted proxy's connection without a header stands for the proxy itself.
    dev_ctx = client_ssl(pki, None)
    reader, writer = await open_raw(listener.port)
    await writer.start_tls(dev_ctx, server_hostname="localhost")
    client = RawClient(reader, writer)
    await client.send(connect_packet("x", password="sk_live_" + "C" * 42 + "A"))
    reply = await client.read_packet()
    assert reply is not None and reply[0] == 0x20
    await client.close()
