"""amqtt 0.12.1's asyncio ``MQTTClient`` as a third-party client of our broker (issue 13):
mTLS, QoS 1 uplink (PUBACK after the Redis append), a downlink to its subscription, and
its persistent session (cleansession False) getting a downlink queued while it was away."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from corem_ingress.store.downlinks import send_downlink
from tests.mqtt.conftest import Device, Pki, provision_x509, wait_for

pytestmark = pytest.mark.integration


def amqtt_client(pki: Pki, dev: Device, port: int) -> Any:
    from amqtt.client import MQTTClient

    assert dev.cert is not None
    return MQTTClient(
        client_id=dev.device_id,
        config={
            "auto_reconnect": False,
            "check_hostname": False,  # our test server certificate names localhost
            "connection": {
                "uri": f"mqtts://127.0.0.1:{port}",
                "cafile": str(pki.ca_file),
                "certfile": str(dev.cert.cert),
                "keyfile": str(dev.cert.key),
            },
        },
    )


async def test_amqtt_client_publishes_and_gets_downlinks(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    from amqtt.mqtt.constants import QOS_1

    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-amqtt")
    client = amqtt_client(pki, dev, listener.port)
    await client.connect(cleansession=False)
    try:
        granted = await client.subscribe([(f"devices/{dev.device_id}/down/#", QOS_1)])
        assert granted == [1]
        # QoS 1 uplink: amqtt returns once the PUBACK came, i.e. after the append.
        await client.publish(f"devices/{dev.device_id}/up/telemetry", b'{"t":3}', qos=QOS_1)
        (entry,) = await redis.xrange(node.keys.uplink_stream("acme"))
        assert entry[1]["device_id"] == dev.device_id and entry[1]["payload"] == '{"t":3}'
        sent = await send_downlink(
            registry, "acme", dev.device_id, "config", {"a": 1}, qos=1, actor="t", now=time.time()
        )
        assert sent["state"] == "delivered", sent
        msg = await client.deliver_message(timeout_duration=10)
        assert msg is not None and json.loads(bytes(msg.data)) == {"a": 1}
        assert msg.topic == f"devices/{dev.device_id}/down/config" and msg.qos == 1
    finally:
        await client.disconnect()
    await wait_for(lambda: listener.holder(dev.device_id) is None)
    # Away: queued; back (cleansession False): delivered from the stored session.
    sent = await send_downlink(
        registry, "acme", dev.device_id, "config", "while-away", qos=1, actor="t", now=time.time()
    )
    assert sent["state"] == "queued", sent
    client = amqtt_client(pki, dev, listener.port)
    await client.connect(cleansession=False)
    try:
        msg = await client.deliver_message(timeout_duration=10)
        assert msg is not None and bytes(msg.data) == b"while-away"
        async with asyncio.timeout(10):
            while await redis.llen(f"corem:dlq:{{{dev.device_id}}}"):
                await asyncio.sleep(0.05)
    finally:
        await client.disconnect()
