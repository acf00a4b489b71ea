"""``POST /api/v1/devices/{device_id}/downlinks`` (issue 12 §4): the CLI's downlink over the
admin API, tenant-isolated, audited, and delivered to the device's live MQTT session."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from corem_ingress.adapters import http, mqtt
from corem_ingress.adapters.mqtt import codec
from corem_ingress.store.keys import KeySchema
from tests.mqtt.conftest import (  # noqa: F401  (pki: the fixture)
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    pki,
    provision_x509,
    wait_for,
)

from .conftest import Api

pytestmark = pytest.mark.integration


def path(device_id: str) -> str:
    return f"/api/v1/devices/{device_id}/downlinks"


async def test_downlink_reaches_the_subscribed_device_and_is_audited(
    start_node: Any,
    operator_tokens: Any,
    registry: Any,
    pki: Any,  # noqa: F811  (the MQTT tests' fixture, imported above)
    redis: aioredis.Redis,
) -> None:
    tokens_file, tokens = operator_tokens
    node = await start_node(
        [http.build, mqtt.build],
        http={"admin_tokens_file": str(tokens_file)},
        mqtt=mqtt_section(pki),
    )
    http_port = node.listeners[0].port
    mqtt_port = node.listeners[1].port
    dev = await provision_x509(registry, pki, "acme", "hw-dl")
    client = await RawClient.open(mqtt_port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id))
    assert await client.read_packet() == b"\x20\x02\x00\x00"
    await client.send(codec.encode_subscribe(1, [(f"devices/{dev.device_id}/down/#", 1)]))
    assert await client.read_packet() == b"\x90\x03\x00\x01\x01"
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{http_port}", tokens)
        sent = await api.request(
            "POST",
            path(dev.device_id),
            tenant="acme",
            json={"kind": "config", "payload": {"rate": 5}},
        )
        assert sent.status == 202
        # Issue 13: the answer says what happened (the bare id it gave before did not).
        assert set(sent.body) == {"state", "message_id", "stream_id", "device_id"}
        assert sent.body["state"] == "delivered"
        assert sent.body["device_id"] == dev.device_id
        packet = await client.read_packet()
        assert packet is not None
        topic = f"devices/{dev.device_id}/down/config".encode()
        assert topic in packet and packet.endswith(b'{"rate":5}')
        assert packet[0] >> 4 == codec.PacketType.PUBLISH and (packet[0] >> 1) & 3 == 1
        # QoS 0, a text payload.
        sent = await api.request(
            "POST",
            path(dev.device_id),
            tenant="acme",
            json={"kind": "reboot", "payload": "now", "qos": 0},
        )
        assert sent.status == 202 and sent.body["state"] == "delivered"
        packet = await client.read_packet()
        assert packet is not None and packet.endswith(b"now") and (packet[0] >> 1) & 3 == 0
        # Not subscribed to that kind: dropped, and the answer says why.
        flt = f"devices/{dev.device_id}/down/#".encode()
        body = b"\x00\x02" + len(flt).to_bytes(2, "big") + flt
        await client.send(bytes((0xA2, len(body))) + body)  # UNSUBSCRIBE
        assert await client.read_packet() == b"\xb0\x02\x00\x02"
        sent = await api.request(
            "POST", path(dev.device_id), tenant="acme", json={"kind": "config", "payload": 1}
        )
        assert (sent.status, sent.body["state"], sent.body["reason"]) == (
            202,
            "dropped",
            "not_subscribed",
        )
        # Another tenant's operator: 404 like a device that does not exist; nothing recorded.
        other = await api.request(
            "POST", path(dev.device_id), tenant="globex", json={"kind": "x", "payload": 1}
        )
        assert other.status == 404
        # Bad requests.
        for body in (
            {"kind": "Bad Kind", "payload": 1},
            {"kind": "ok"},
            {"kind": "ok", "payload": 1, "qos": 2},
            {"kind": "ok", "payload": 1, "qos": True},
            {"kind": "ok", "payload": 1, "qos": None},
            {"kind": None, "payload": 1},
            {"kind": "ok", "payload": 1, "extra": 1},
            {"kind": "ok", "payload": 1, "expiry_s": 0},
            {"kind": "ok", "payload": 1, "expiry_s": "10"},
        ):
            reply = await api.request("POST", path(dev.device_id), tenant="acme", json=body)
            assert reply.status == 400, body
        surrogate = await api.request(
            "POST",
            path(dev.device_id),
            tenant="acme",
            data=b'{"kind": "ok", "payload": "\\ud800"}',
            headers={"Content-Type": "application/json"},
        )
        assert surrogate.status == 400
        assert (
            await api.request("POST", path(dev.device_id), json={"kind": "x", "payload": 1})
        ).status == 401
    await client.close()
    stream = await redis.xrange(KeySchema("corem").downlink_stream("acme"))
    assert [json.loads(f["downlink"])["kind"] for _id, f in stream] == [
        "config",
        "reboot",
        "config",
    ]
    assert await redis.xlen(KeySchema("corem").downlink_stream("globex")) == 0
    records = [f for _id, f in await redis.xrange(KeySchema("corem").audit_stream)]
    sends = [
        (r["tenant_id"], r["actor"], r["outcome"])
        for r in records
        if r["action"] == "downlink.send"
    ]
    assert sends == [
        ("acme", "admin:ops-acme", "OK"),
        ("acme", "admin:ops-acme", "OK"),
        ("acme", "admin:ops-acme", "OK"),
        ("globex", "admin:ops-globex", "NOT_FOUND"),
        ("acme", "admin:ops-acme", "INVALID_ARGUMENT"),  # the bad kind, refused by the core
        ("acme", "admin:ops-acme", "INVALID_ARGUMENT"),  # expiry_s 0, refused by the core
    ]
