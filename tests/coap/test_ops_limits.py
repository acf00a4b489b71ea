"""CoAP/DTLS limits and metrics on the real listener with real DTLS clients (issue 8).

* failed-handshake throttling per source IP: after ``auth_fail_max`` failed handshakes
  the source's ClientHellos are dropped (even a good device's) until ``auth_block_s``;
* per-tenant session limit: the session over it is closed with close_notify right after
  its handshake;
* per-device message rate: 4.29 Too Many Requests with Max-Age, nothing stored.

The node's clock is the test's: blocks end and buckets refill only when it advances.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest
from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress import metrics
from corem_ingress.adapters import coap
from corem_ingress.sim.dtls_client import AsyncDtlsClient, Client, psk_context
from tests.coap.conftest import (
    coap_listener,
    coap_port,
    coap_section,
    provision_psk,
    read_uplinks,
)
from tests.mqtt.conftest import wait_for

pytestmark = pytest.mark.integration

_mids = iter(range(1, 60_000))


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def limited_node(
    start_node: Any, certs: Any, clock: Any = None, coap_extra: Any = None, **limits: Any
) -> Any:
    section = coap_section(certs, **(coap_extra or {}))
    return await start_node([coap.build], clock=clock, coap=section, limits=limits)


async def post(client: AsyncDtlsClient, path: str, payload: bytes) -> Message:
    m = Message(code=Code.POST, payload=payload)
    m.mtype, m.mid, m.token = CON, next(_mids), os.urandom(4)
    m.opt.uri_path = tuple(path.split("/"))
    client.send(m.encode())
    while True:
        resp = Message.decode(await client.recv(timeout=10))
        if resp.token == m.token:
            return resp


async def test_failed_handshakes_throttle_the_source(
    start_node: Any, certs: Any, registry: Any, clock: Any
) -> None:
    node = await limited_node(start_node, certs, clock, auth_fail_max=2, auth_block_s=30.0)
    port = coap_port(node)
    server = coap_listener(node).dtls_server
    _dev, ident, key = await provision_psk(registry, "thr")
    failed0 = sample("corem_handshakes_total", transport="coap", outcome="failed")
    unknown0 = sample("corem_auth_failures_total", transport="coap", reason="unknown_or_revoked")
    wrong0 = sample("corem_auth_failures_total", transport="coap", reason="wrong_key")
    refused0 = sample("corem_limit_refusals_total", transport="coap", limit="auth_throttle")

    wrong_key = await AsyncDtlsClient.connect(psk_context(ident.encode(), b"x" * 16), port)
    assert wrong_key.client.failed is not None
    wrong_key.close()
    unknown = await AsyncDtlsClient.connect(psk_context(b"no-such-identity", key), port)
    assert unknown.client.failed is not None
    unknown.close()
    await wait_for(lambda: node.services.access.throttle.blocks == 1)

    # Blocked: even the right key gets no handshake (its ClientHellos are dropped).
    with pytest.raises(TimeoutError):
        await AsyncDtlsClient.connect(psk_context(ident.encode(), key), port, timeout=1.5)
    assert server.stats["dropped_throttled"] >= 1
    assert sample("corem_limit_refusals_total", transport="coap", limit="auth_throttle") > refused0

    clock.advance(31)  # the block ends
    good = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), port)
    assert good.client.done
    assert (await post(good, "up/telemetry", b'{"ok":1}')).code == Code.CHANGED
    good.close()
    assert sample("corem_handshakes_total", transport="coap", outcome="failed") - failed0 == 2
    assert (
        sample("corem_auth_failures_total", transport="coap", reason="unknown_or_revoked")
        - unknown0
        == 1
    )
    assert sample("corem_auth_failures_total", transport="coap", reason="wrong_key") - wrong0 == 1


async def test_per_tenant_session_limit(start_node: Any, certs: Any, registry: Any) -> None:
    node = await limited_node(start_node, certs, per_tenant_max_connections=1)
    port = coap_port(node)
    listener = coap_listener(node)
    _d1, i1, k1 = await provision_psk(registry, "ts")
    _d2, i2, k2 = await provision_psk(registry, "ts")
    _d3, i3, k3 = await provision_psk(registry, "ts-other")
    refused0 = sample("corem_limit_refusals_total", transport="coap", limit="tenant_connections")
    opened0 = sample("corem_sessions_opened_total", transport="coap", tenant="ts")

    first = await AsyncDtlsClient.connect(psk_context(i1.encode(), k1), port)
    assert (await post(first, "up/telemetry", b"1")).code == Code.CHANGED
    second = await AsyncDtlsClient.connect(psk_context(i2.encode(), k2), port)
    await second.wait_closed(timeout=5)  # close_notify right after the handshake
    assert second.client.closed
    second.close()
    other = await AsyncDtlsClient.connect(psk_context(i3.encode(), k3), port)
    assert (await post(other, "up/telemetry", b"3")).code == Code.CHANGED
    assert (
        sample("corem_limit_refusals_total", transport="coap", limit="tenant_connections")
        - refused0
        == 1
    )

    first.close()  # close_notify: the slot is free again
    await wait_for(lambda: node.services.access.tenant_connections.count("ts") == 0)
    second = await AsyncDtlsClient.connect(psk_context(i2.encode(), k2), port)
    assert (await post(second, "up/telemetry", b"2")).code == Code.CHANGED
    assert sample("corem_sessions_opened_total", transport="coap", tenant="ts") - opened0 == 2
    assert len(listener.sessions) == 2
    second.close()
    other.close()
    await wait_for(lambda: len(node.services.access.tenant_connections) == 0)


async def test_per_device_message_rate(
    start_node: Any, certs: Any, registry: Any, redis: Any, clock: Any
) -> None:
    node = await limited_node(
        start_node, certs, clock, per_device_msgs_per_s=0.5, per_device_burst=2
    )
    _dev, ident, key = await provision_psk(registry, "rate")
    refused0 = sample("corem_limit_refusals_total", transport="coap", limit="device_rate")
    ok0 = sample("corem_uplinks_total", transport="coap", outcome="ok")

    c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
    for n in (1, 2):  # the burst
        assert (await post(c, "up/telemetry", b"%d" % n)).code == Code.CHANGED
    resp = await post(c, "up/telemetry", b"3")
    assert resp.code == Code.TOO_MANY_REQUESTS
    assert resp.opt.max_age == 2  # one token every 2 s
    assert [u["payload"] for u in await read_uplinks(redis, "rate")] == ["1", "2"]
    clock.advance(2.0)
    assert (await post(c, "up/telemetry", b"3")).code == Code.CHANGED
    c.close()
    assert [u["payload"] for u in await read_uplinks(redis, "rate")] == ["1", "2", "3"]
    assert (
        sample("corem_limit_refusals_total", transport="coap", limit="device_rate") - refused0 == 1
    )
    assert sample("corem_uplinks_total", transport="coap", outcome="ok") - ok0 == 3


async def test_oversized_uplink_is_counted(start_node: Any, certs: Any, registry: Any) -> None:
    node = await limited_node(start_node, certs, coap_extra={"max_body_bytes": 64})
    _dev, ident, key = await provision_psk(registry, "big")
    before = sample("corem_limit_refusals_total", transport="coap", limit="max_size")
    c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
    resp = await post(c, "up/telemetry", b"x" * 100)
    c.close()
    assert resp.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert sample("corem_limit_refusals_total", transport="coap", limit="max_size") - before == 1


async def test_max_sessions_refusal_is_counted(start_node: Any, certs: Any, registry: Any) -> None:
    node = await limited_node(start_node, certs, coap_extra={"max_sessions": 1})
    _d1, i1, k1 = await provision_psk(registry, "ms")
    _d2, i2, k2 = await provision_psk(registry, "ms")
    before = sample("corem_limit_refusals_total", transport="coap", limit="max_sessions")
    first = await AsyncDtlsClient.connect(psk_context(i1.encode(), k1), coap_port(node))
    assert first.client.done
    with pytest.raises(TimeoutError):  # its verified ClientHellos are ignored
        await AsyncDtlsClient.connect(psk_context(i2.encode(), k2), coap_port(node), timeout=1.5)
    first.close()
    assert sample("corem_limit_refusals_total", transport="coap", limit="max_sessions") > before


async def test_handshake_rate_refusal_is_counted(
    start_node: Any, certs: Any, registry: Any
) -> None:
    node = await limited_node(
        start_node, certs, coap_extra={"handshake_rate_per_s": 0.01, "handshake_burst": 1}
    )
    _d1, i1, k1 = await provision_psk(registry, "hr")
    before = sample("corem_limit_refusals_total", transport="coap", limit="handshake_rate")
    first = await AsyncDtlsClient.connect(psk_context(i1.encode(), k1), coap_port(node))
    assert first.client.done
    first.close()
    with pytest.raises(TimeoutError):  # the source's burst is spent: its hellos are ignored
        await AsyncDtlsClient.connect(psk_context(i1.encode(), k1), coap_port(node), timeout=1.5)
    assert sample("corem_limit_refusals_total", transport="coap", limit="handshake_rate") > before


async def test_pending_handshake_cap_per_source_is_counted(
    start_node: Any, certs: Any, registry: Any
) -> None:
    """A source with ``max_pending_handshakes_per_source`` half-done handshakes gets no
    more handshake state until one of them ends; each ignored ClientHello is counted."""
    node = await limited_node(
        start_node, certs, coap_extra={"max_pending_handshakes_per_source": 1}
    )
    _d1, i1, k1 = await provision_psk(registry, "ph")
    before = sample("corem_limit_refusals_total", transport="coap", limit="pending_handshakes")
    # A half-done handshake: cookie exchange, the ClientHello with the cookie, then silence.
    silent = Client(psk_context(b"silent", b"s" * 32))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", coap_port(node)))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        sock.send(silent.start()[0])
        silent.receive(await loop.sock_recv(sock, 65536))
        sock.send(silent.outgoing()[0])
        await loop.sock_recv(sock, 65536)  # the server's flight: the state exists
        assert sample("corem_dtls_pending_handshakes") >= 1
        with pytest.raises(TimeoutError):  # its verified ClientHellos are ignored meanwhile
            await AsyncDtlsClient.connect(
                psk_context(i1.encode(), k1), coap_port(node), timeout=1.5
            )
        assert (
            sample("corem_limit_refusals_total", transport="coap", limit="pending_handshakes")
            > before
        )
    coap_listener(node).dtls_server.handle_timer(1e12)  # the half-done one times out
    first = await AsyncDtlsClient.connect(psk_context(i1.encode(), k1), coap_port(node))
    assert first.client.done
    first.close()


async def test_dtls_timers_do_not_follow_the_wall_clock(
    start_node: Any, certs: Any, registry: Any, clock: Any
) -> None:
    """Issue 19: the DTLS server's ``now`` is monotonic. The node's clock (dates: validity,
    registrations) stepping an hour back must not keep an idle session open for that hour:
    it is closed after its idle timeout of real time (wall-clock timers waited the hour)."""
    node = await limited_node(start_node, certs, clock, coap_extra={"idle_timeout_s": 1})
    port = coap_port(node)
    server = coap_listener(node).dtls_server
    _dev, ident, key = await provision_psk(registry, "mono")
    client = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), port)
    assert (await post(client, "up/telemetry", b'{"n":1}')).code == Code.CHANGED
    clock.advance(-3600)  # an NTP step back: dates jump, durations do not
    await wait_for(lambda: server.stats["closed:idle"] == 1)
    assert len(server) == 0
    client.close()
