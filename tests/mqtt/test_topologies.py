"""MQTT end to end on a real Redis Cluster (3 masters): PUBACK only after the append, for
tenants whose streams live on different masters, and revocation through the cluster's bus."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corem_ingress.adapters import mqtt
from corem_ingress.adapters.mqtt import codec
from corem_ingress.core.identity import CredentialKind
from tests.mqtt.conftest import RawClient, client_ssl, connect_packet, mqtt_section
from tests.ops.redis_topologies import RedisClusterProcs
from tests.pki import trust_ca

pytestmark = pytest.mark.integration


async def test_mqtt_uplinks_and_revocation_on_a_cluster(
    start_node: Any, pki: Any, redis_cluster: RedisClusterProcs
) -> None:
    node = await start_node([mqtt.build], redis={"url": redis_cluster.url}, mqtt=mqtt_section(pki))
    (listener,) = node.listeners
    registry = node.services.registry
    clients = []
    sent: dict[str, int] = {}
    try:
        for tenant in ("acme", "globex", "initech"):  # streams on different slots
            cert = pki.device(f"{tenant}-topo")
            await trust_ca(registry, tenant, pki.ca)  # Lua on the cluster's registry slot
            dev = await registry.provision(
                tenant, "hw-topo", CredentialKind.X509, actor="test", cert_pem=cert.pem
            )
            client = await RawClient.open(listener.port, client_ssl(pki, cert))
            clients.append((tenant, client, cert.fingerprint))
            await client.send(connect_packet(dev.device.device_id))
            connack = await client.read_packet()
            assert connack is not None and connack[-1] == 0
            topic = f"devices/{dev.device.device_id}/up/telemetry"
            for pid in range(1, 6):
                await client.send(codec.encode_publish(topic, b'{"v":%d}' % pid, 1, pid))
            for pid in range(1, 6):
                assert await client.read_packet() == codec.encode_ack(codec.PacketType.PUBACK, pid)
            sent[tenant] = 5
        redis = node.redis
        for tenant, n in sent.items():
            entries = await redis.xrange(node.keys.uplink_stream(tenant))
            assert len(entries) == n  # every PUBACKed message is in its tenant's stream
        # Revocation through the cluster's pub/sub bus closes that device's connection only.
        tenant, victim, fingerprint = clients[0]
        await registry.revoke_cert(tenant, fingerprint, actor="test")
        assert await asyncio.wait_for(victim.closed_by_server(), 15)
        still = clients[1][1]
        await still.send(bytes((codec.PacketType.PINGREQ << 4, 0)))
        assert await still.read_packet() == codec.PINGRESP
    finally:
        for _tenant, client, _fp in clients:
            await client.close()
