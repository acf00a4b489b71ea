"""Tenant trust anchors at the MQTT/TLS handshake (issue 12 §1): after the fingerprint
resolves to (tenant, device), the chain the device presented must end in one of that
tenant's CAs; removing the CA ends live sessions and refuses the next connection."""

from __future__ import annotations

import pytest

from corem_ingress import devcerts
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    RawClient,
    client_ssl,
    connect_packet,
    provision_x509,
    run,
    tls_args,
)
from tests.pki import register_as_before_tenant_cas, trust_ca

pytestmark = pytest.mark.integration


async def test_a_certificate_registered_by_another_tenant_does_not_authenticate_there(
    mqtt_node, registry, pki, redis
):  # type: ignore[no-untyped-def]
    """A registration made before tenant CAs (the hijack of the review: tenant B registered
    tenant A's device certificate) no longer lands A's device in B: its chain ends in A's
    CA, not in one of B's, so the CONNECT is refused (CONNACK 5) and nothing is stored."""
    _node, listener = await mqtt_node()
    await trust_ca(registry, "tenant-b", devcerts.make_ca("B's own CA"))
    a_device = pki.device("a-device")  # issued by pki.ca: A's CA, in the global bound
    b_device_id = await register_as_before_tenant_cas(
        registry, "tenant-b", "stolen", a_device.issued
    )
    topic = f"devices/{b_device_id}/up/telemetry"
    code, out = await run(
        [
            MOSQUITTO_PUB,
            *tls_args(pki, None, a_device),
            "-p",
            str(listener.port),
            "-i",
            b_device_id,
            "-t",
            topic,
            "-m",
            "{}",
            "-q",
            "1",
            "-d",
        ]
    )
    assert code != 0 and "CONNACK (5)" in out, out
    assert await redis.xlen("corem:uplink:{tenant-b}") == 0
    # Once B trusts that CA (its own decision), the same registration authenticates.
    await trust_ca(registry, "tenant-b", pki.ca)
    client = await RawClient.open(listener.port, client_ssl(pki, a_device))
    await client.send(connect_packet(b_device_id))
    connack = await client.read_packet()
    assert connack is not None and connack[-1] == 0


async def test_removing_the_ca_ends_the_live_session_and_refuses_the_next(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-trust")
    other = await provision_x509(registry, pki, "globex", "hw-other")  # same CA, other tenant
    clients = []
    for d in (dev, other):
        client = await RawClient.open(listener.port, client_ssl(pki, d.cert))
        await client.send(connect_packet(d.device_id))
        connack = await client.read_packet()
        assert connack is not None and connack[-1] == 0
        clients.append(client)

    await registry.remove_ca("acme", pki.ca.fingerprint, actor="test")

    assert await clients[0].closed_by_server()
    again = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await again.send(connect_packet(dev.device_id))
    refused = await again.read_packet()
    assert refused is not None and refused[-1] == 5
    # globex trusts the CA still: its session is untouched (PINGREQ -> PINGRESP).
    await clients[1].send(b"\xc0\x00")
    assert await clients[1].read_packet() == b"\xd0\x00"
