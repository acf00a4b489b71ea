"""MQTT 5.0 on the real listener: paho-mqtt 2.x (MQTTv5), mosquitto -V mqttv5, raw bytes."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from corem_ingress.adapters.mqtt import codec
from corem_ingress.core.identity import CredentialKind
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    Device,
    Pki,
    RawClient,
    client_ssl,
    provision_x509,
    run,
    tls_args,
    wait_for,
)
from tests.mqtt.test_topics_downlink import cli_downlink, finish, start_sub

pytestmark = pytest.mark.integration


class Paho5:
    """A paho-mqtt MQTTv5 client that records what the broker said."""

    def __init__(self, pki: Pki, *, cert: Any = None, client_id: str = "") -> None:
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.subscribed = threading.Event()
        self.connack: tuple[int, Any] | None = None
        self.disconnect_reason: int | None = None
        self.suback: list[int] = []
        self.messages: list[Any] = []
        c = self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        c.reconnect_delay_set(60, 60)
        c.tls_set(
            ca_certs=str(pki.ca_file),
            certfile=str(cert.cert) if cert else None,
            keyfile=str(cert.key) if cert else None,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = lambda _c, _u, msg: self.messages.append(msg)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        self.connack = (reason.value, props)
        self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnect_reason = reason.value
        self.gone.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        self.suback = [rc.value for rc in codes]
        self.subscribed.set()

    async def connect(self, port: int, *, password: str | None = None) -> int:
        if password is not None:
            self.client.username_pw_set("device", password)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        await asyncio.to_thread(self.client.connect, "127.0.0.1", port, 30, properties=props)
        self.client.loop_start()
        assert await asyncio.to_thread(self.connected.wait, 10), "no CONNACK"
        assert self.connack is not None
        return int(self.connack[0])

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


async def test_paho_v5_certificate_session(mqtt_node, registry, pki, redis, redis_url):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-v5")
    c = Paho5(pki, cert=dev.cert)
    assert await c.connect(listener.port) == 0
    assert c.connack is not None
    props = c.connack[1]
    # Empty client id: the device id is assigned; the broker's limits are announced.
    assert props.AssignedClientIdentifier == dev.device_id
    mqtt = node.config.mqtt
    assert props.ReceiveMaximum == mqtt.max_inflight == 20
    assert props.MaximumPacketSize == mqtt.max_packet_size == 65536
    assert props.SharedSubscriptionAvailable == 0 and props.TopicAliasMaximum == 16

    pub = Properties(PacketTypes.PUBLISH)
    pub.UserProperty = [("site", "north"), ("fw", "1.2")]
    pub.ContentType = "application/json"
    pub.PayloadFormatIndicator = 1
    info = c.client.publish(f"devices/{dev.device_id}/up/telemetry", b'{"t":1}', 1, properties=pub)
    await asyncio.to_thread(info.wait_for_publish, 10)
    (entry,) = await redis.xrange(node.keys.uplink_stream("acme"))
    assert entry[1]["payload"] == '{"t":1}'
    assert json.loads(entry[1]["properties"]) == {
        "content_type": "application/json",
        "payload_format_indicator": 1,
        "user_properties": [["site", "north"], ["fw", "1.2"]],
    }

    down = f"devices/{dev.device_id}/down"
    sub = Properties(PacketTypes.SUBSCRIBE)
    sub.SubscriptionIdentifier = 42
    c.client.subscribe(
        [(f"{down}/#", 1), (f"$share/g/{down}/x", 1), ("devices/other/down/#", 1)],
        properties=sub,
    )
    assert await asyncio.to_thread(c.subscribed.wait, 10)
    assert c.suback == [1, 0x9E, 0x87]  # granted, shared refused, not authorized
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    await cli_downlink(redis_url, "acme", dev.device_id, "config", "v5-hello")
    await wait_for(lambda: bool(c.messages))
    assert c.messages[0].topic == f"{down}/config" and c.messages[0].payload == b"v5-hello"
    assert c.messages[0].properties.SubscriptionIdentifier == [42]
    await c.stop()


async def test_paho_v5_api_key(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    out = await registry.provision("acme", "hw-v5key", CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    dev = Device("acme", out.device.device_id, api_key=out.api_key.api_key)
    assert dev.api_key is not None
    good = Paho5(pki, client_id=dev.device_id)
    assert await good.connect(listener.port, password=dev.api_key) == 0
    await good.stop()
    await registry.revoke_api_key("acme", out.api_key.key_id, actor="test")
    revoked = Paho5(pki, client_id=dev.device_id)
    assert await revoked.connect(listener.port, password=dev.api_key) == 0x87
    await revoked.stop()
    malformed = Paho5(pki)
    assert await malformed.connect(listener.port, password="not-a-key") == 0x86
    await malformed.stop()


async def test_revoked_v5_device_gets_disconnect_0x98(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-v5rev")
    other = await provision_x509(registry, pki, "acme", "hw-v5rev2")
    c = Paho5(pki, cert=dev.cert, client_id=dev.device_id)
    assert await c.connect(listener.port) == 0
    raw = await RawClient.open(listener.port, client_ssl(pki, other.cert))
    await raw.send(codec.encode_connect(codec.Connect(5, other.device_id, True, 30, None, None)))
    connack = await raw.read_packet()
    assert connack is not None and connack[:4] == b"\x20" + bytes((len(connack) - 2,)) + b"\x00\x00"

    await registry.revoke_cert("acme", dev.cert.fingerprint, actor="test")
    await registry.revoke_cert("acme", other.cert.fingerprint, actor="test")
    assert await asyncio.to_thread(c.gone.wait, 10)
    assert c.disconnect_reason == 0x98  # administrative action: "revoked", not "network"
    assert await raw.read_packet() == b"\xe0\x01\x98"
    assert await raw.read_packet() is None
    await c.stop()


async def test_v5_takeover_and_keepalive_reasons(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-v5to")

    async def raw5() -> RawClient:
        r = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
        await r.send(codec.encode_connect(codec.Connect(5, dev.device_id, True, 1, None, None)))
        connack = await r.read_packet()
        assert connack is not None and connack[3] == 0
        return r

    first = await raw5()
    second = await raw5()
    assert await first.read_packet() == b"\xe0\x01\x8e"  # session taken over
    # keep-alive 1 s: silent for 1.5 s -> DISCONNECT 0x8D.
    assert await second.read_packet(timeout=10) == b"\xe0\x01\x8d"


async def test_mosquitto_v5_publish_and_subscribe(mqtt_node, registry, pki, redis, redis_url):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-v5mosq")
    code, out = await run(
        [
            MOSQUITTO_PUB,
            *tls_args(pki, dev),
            "-p",
            str(listener.port),
            "-V",
            "mqttv5",
            "-i",
            dev.device_id,
            "-q",
            "1",
            "-t",
            f"devices/{dev.device_id}/up/event",
            "-m",
            "hello-v5",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-d",
        ]
    )
    assert code == 0, out
    assert "Client " in out and "received PUBACK" in out, out
    entries = await redis.xrange(node.keys.uplink_stream("acme"))
    assert [e[1]["payload"] for e in entries] == ['"hello-v5"']

    proc, line = await start_sub(
        pki, dev, listener.port, f"devices/{dev.device_id}/down/#", "-V", "mqttv5", "-C", "1"
    )
    assert line.strip().endswith(": 1"), line
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    await cli_downlink(redis_url, "acme", dev.device_id, "config", "to-v5")
    code, out = await finish(proc)
    assert code == 0 and f"devices/{dev.device_id}/down/config to-v5" in out, out


async def test_unknown_newer_level_gets_connack_0x84(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-v6")
    raw = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    cid = dev.device_id.encode()
    body = b"\x00\x04MQTT\x06\x02\x00\x1e\x00" + len(cid).to_bytes(2, "big") + cid
    await raw.send(bytes((0x10, len(body))) + body)
    assert await raw.read_packet() == b"\x20\x03\x00\x84\x00"
    assert await raw.read_packet() is None


async def test_paho_v5_honours_receive_maximum_and_topic_aliases(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, redis
):
    """A burst of QoS 1 past the announced Receive Maximum (4) is paced by paho itself (no
    DISCONNECT 0x93), and a topic alias set once names the topic of later messages."""
    node, listener = await mqtt_node(max_inflight=4)
    dev = await provision_x509(registry, pki, "acme", "hw-v5rm")
    c = Paho5(pki, cert=dev.cert, client_id=dev.device_id)
    assert await c.connect(listener.port) == 0
    topic = f"devices/{dev.device_id}/up/telemetry"
    infos = []
    for i in range(30):
        alias = Properties(PacketTypes.PUBLISH)
        alias.TopicAlias = 1
        infos.append(c.client.publish(topic if i == 0 else "", b"%d" % i, 1, properties=alias))
    for info in infos:
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()
    entries = await redis.xrange(node.keys.uplink_stream("acme"))
    assert [e[1]["payload"] for e in entries] == [str(i) for i in range(30)]
    assert {e[1]["kind"] for e in entries} == {"telemetry"}
    assert c.disconnect_reason is None and listener.stats["protocol_closes"] == 0
    await c.stop()


async def test_v5_oversized_packet_gets_disconnect_0x95(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(max_packet_size=1024)
    dev = await provision_x509(registry, pki, "acme", "hw-v5big")
    raw = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await raw.send(codec.encode_connect(codec.Connect(5, dev.device_id, True, 30, None, None)))
    connack = await raw.read_packet()
    assert connack is not None and connack[3] == 0
    big = codec.encode_publish(
        f"devices/{dev.device_id}/up/event", b"x" * 5000, 0, properties=b"\x00"
    )
    await raw.send(big[:64])  # refused as soon as the length is known
    assert await raw.read_packet() == b"\xe0\x01\x95"
    assert await raw.read_packet() is None
