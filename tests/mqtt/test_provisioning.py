"""Provisioning by claim over MQTT: mosquitto_rr (MQTT 5 request/response), paho (3.1.1 and
5, Correlation Data), raw packets for what a claim may not do. Real node and redis-server."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from typing import Any

import pytest

from corem_ingress.adapters.mqtt import codec
from corem_ingress.core.claims import ClaimKind
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    Pki,
    RawClient,
    client_ssl,
    connect_packet,
    paho_connect,
    run,
    tls_args,
)

MOSQUITTO_RR = shutil.which("mosquitto_rr") or "mosquitto_rr"
REQUEST = "$provisioning/claim/request"
RESPONSE = "$provisioning/claim/response"


async def new_claim(registry: Registry, max_uses: int = 5) -> str:
    issued = await registry.create_claim(
        "acme",
        ClaimKind.API_KEY,
        CredentialKind.API_KEY,
        max_uses=max_uses,
        expires_at=None,
        actor="test",
    )
    assert issued.claim_key is not None
    return issued.claim_key


def paho_request(
    port: int, pki: Pki, key: str, payloads: list[bytes], *, v5: bool = False
) -> tuple[int | None, list[tuple[str, dict[str, Any], bytes | None]]]:
    """Connect with the claim key, subscribe, send each request, collect the replies."""
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rc, client = paho_connect(
        port, pki, password=key, protocol=paho.MQTTv5 if v5 else None, client_id="factory-7"
    )
    replies: list[tuple[str, dict[str, Any], bytes | None]] = []
    got = threading.Semaphore(0)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None) if v5 else None
        replies.append((msg.topic, json.loads(msg.payload), correlation))
        got.release()

    client.on_message = on_message
    try:
        if rc != 0:
            return rc, replies
        response = f"{RESPONSE}/factory-7" if v5 else RESPONSE
        subscribed = threading.Event()
        client.on_subscribe = lambda *_a: subscribed.set()
        client.subscribe(response, qos=1)
        assert subscribed.wait(10)
        for i, payload in enumerate(payloads):
            props = None
            if v5:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = response
                props.CorrelationData = f"req-{i}".encode()
            client.publish(REQUEST, payload, qos=1, properties=props)
            assert got.acquire(timeout=10), "no reply"
        return rc, replies
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mosquitto_rr_enrols_then_the_device_publishes(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    key = await new_claim(registry)
    code, out = await run(
        [
            MOSQUITTO_RR,
            *tls_args(pki, None),
            "-p",
            str(listener.port),
            "-u",
            "factory",
            "-P",
            key,
            "-t",
            REQUEST,
            "-e",
            f"{RESPONSE}/rr-1",
            "-m",
            '{"hardware_id": "mqtt-hw-1"}',
            "-W",
            "10",
        ]
    )
    assert code == 0, out
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["status"] == 201 and reply["created"] and reply["hardware_id"] == "mqtt-hw-1"
    device_id, api_key = reply["device_id"], reply["api_key"]
    code, out = await run(
        [
            MOSQUITTO_PUB,
            *tls_args(pki, None),
            "-p",
            str(listener.port),
            "-i",
            device_id,
            "-u",
            device_id,
            "-P",
            api_key,
            "-t",
            f"devices/{device_id}/up/event",
            "-m",
            "hello",
            "-q",
            "1",
            "-d",
        ]
    )
    assert code == 0 and "received PUBACK" in out, out


async def test_paho_v311_retry_reissues_then_first_use_refuses(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    key = await new_claim(registry)
    body = b'{"hardware_id": "mqtt-hw-2"}'
    rc, replies = await asyncio.to_thread(
        paho_request, listener.port, pki, key, [body, body, b"not json"]
    )
    assert rc == 0
    (t1, first, _), (t2, second, _), (_, bad, _) = replies
    assert t1 == t2 == RESPONSE
    assert first["status"] == 201 and second["status"] == 200 and second["reissued"]
    assert second["device_id"] == first["device_id"] and second["api_key"] != first["api_key"]
    assert bad["status"] == 400 and bad["error"]["code"] == "INVALID_ARGUMENT"
    # First use of the re-issued key (over MQTT), then a retry is refused.
    rc, client = await asyncio.to_thread(
        paho_connect,
        listener.port,
        pki,
        password=second["api_key"],
        client_id=second["device_id"],
    )
    client.disconnect()
    client.loop_stop()
    assert rc == 0
    _, replies = await asyncio.to_thread(paho_request, listener.port, pki, key, [body])
    assert replies[0][1]["status"] == 409


async def test_paho_v5_reply_topic_and_correlation_data(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    key = await new_claim(registry, max_uses=1)
    rc, replies = await asyncio.to_thread(
        paho_request,
        listener.port,
        pki,
        key,
        [b'{"hardware_id": "v5-a"}', b'{"hardware_id": "v5-b"}'],
        v5=True,
    )
    assert rc == 0
    assert [(t, r["status"], c) for t, r, c in replies] == [
        (f"{RESPONSE}/factory-7", 201, b"req-0"),
        (f"{RESPONSE}/factory-7", 403, b"req-1"),  # one use only
    ]


async def test_a_claim_session_can_do_nothing_else(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    key = await new_claim(registry)
    client = await RawClient.open(listener.port, client_ssl(pki, None))
    await client.send(connect_packet("c1", password=key))
    assert await client.read_packet() == codec.encode_connack(False, 0)
    await client.send(codec.encode_subscribe(1, [("devices/#", 1), ("$provisioning/#", 1)]))
    suback = await client.read_packet()
    assert suback is not None and suback[-2:] == bytes([0x80, 0x00])
    await client.send(codec.encode_publish("devices/x/up/event", b"hi", 1, 2))
    assert await client.closed_by_server()
    await client.close()


@pytest.mark.parametrize("revoke", [False, True])
async def test_unknown_or_revoked_claims_get_connack_5(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, revoke: bool
) -> None:
    _node, listener = await mqtt_node(client_auth="optional")
    key = await new_claim(registry)
    if revoke:
        (claim,), _ = await registry.list_claims("acme")
        await registry.revoke_claim("acme", claim.claim_id, actor="test")
    else:
        key = key[:-2] + ("AA" if key[-2:] != "AA" else "BA")
    rc, client = await asyncio.to_thread(paho_connect, listener.port, pki, password=key)
    client.loop_stop()
    assert rc == 5


async def test_rate_refuses_requests_then_connects_with_quota_code(  # type: ignore[no-untyped-def]
    start_node, registry, pki
) -> None:
    import paho.mqtt.client as paho

    from corem_ingress.adapters import mqtt
    from tests.mqtt.conftest import mqtt_section

    node = await start_node(
        [mqtt.build],
        mqtt=mqtt_section(pki, client_auth="optional"),
        provisioning={"claim_rate_per_minute": 1},
    )
    port = node.listeners[0].port
    key = await new_claim(registry)
    _, replies = await asyncio.to_thread(
        paho_request, port, pki, key, [b'{"hardware_id": "r1"}', b'{"hardware_id": "r2"}']
    )
    assert [r["status"] for _t, r, _c in replies] == [201, 429]
    assert replies[1][1]["error"]["code"] == "RESOURCE_EXHAUSTED"
    rc, client = await asyncio.to_thread(paho_connect, port, pki, password=key)
    client.loop_stop()
    assert rc == 3  # MQTT 3.1.1: server unavailable (retry later)
    rc, client = await asyncio.to_thread(
        paho_connect, port, pki, password=key, protocol=paho.MQTTv5
    )
    client.loop_stop()
    assert rc == 0x97  # quota exceeded
