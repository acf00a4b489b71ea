"""A broker node killed (SIGKILL) under a connected MQTT device: the device reconnects
through another node (as a load balancer re-hashes it), its uplinks are acknowledged and
stored there, and a revocation issued afterwards still disconnects it.

Two real ``corem-ingress serve`` processes on one real Redis; the device is paho-mqtt
over TLS with an API key. The adapters are used as built, not modified.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.core.identity import CredentialKind
from corem_ingress.embedded_redis import free_port
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.conftest import KEK_LINE

pytestmark = pytest.mark.integration


@dataclass
class Broker:
    name: str
    proc: subprocess.Popen[bytes]
    mqtt_port: int
    health_port: int
    log: Path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = devcerts.make_ca()
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(
        tmp_path / "server.pem", tmp_path / "server.key"
    )
    return {n: tmp_path / f"{n}.pem" for n in ("ca", "server")} | {
        "server_key": tmp_path / "server.key"
    }


@pytest.fixture
async def brokers(
    redis_url: str, redis: aioredis.Redis, pki: dict[str, Path], tmp_path: Path
) -> AsyncIterator[Callable[[str], Broker]]:
    """Factory of ``corem-ingress serve`` processes with only MQTT (and health) enabled."""
    started: list[Broker] = []

    def start(name: str) -> Broker:
        mqtt_port, health_port = free_port(), free_port()
        env = {
            **os.environ,
            "COREM_REDIS_URL": redis_url,
            "COREM_PSK_KEK": KEK_LINE,
            "COREM_NODE_ID": name,
            "COREM_SHUTDOWN_DEADLINE_S": "3",
            "COREM_STATE_DIR": str(tmp_path / f"state-{name}"),
            "COREM_LOGGING_FORMAT": "console",
            "COREM_HEALTH_PORT": str(health_port),
            "COREM_HTTP_ENABLED": "false",
            "COREM_COAP_ENABLED": "false",
            "COREM_MQTT_PORT": str(mqtt_port),
            "COREM_MQTT_CLIENT_AUTH": "optional",
            "COREM_MQTT_SERVER_CERT": str(pki["server"]),
            "COREM_MQTT_SERVER_KEY": str(pki["server_key"]),
            "COREM_MQTT_CLIENT_CA_FILES": str(pki["ca"]),
        }
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corem_ingress", "serve"], env=env, stdout=out, stderr=out
            )
        broker = Broker(name, proc, mqtt_port, health_port, log)
        started.append(broker)
        return broker

    yield start
    for b in started:
        if b.proc.poll() is None:
            b.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(b.proc.wait, 15)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait(5)


async def wait_ready(b: Broker, timeout: float = 30) -> None:
    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{b.health_port}/readyz", timeout=1) as r:
            return bool(r.status == 200)

    async with asyncio.timeout(timeout):
        while True:
            assert b.proc.poll() is None, b.log.read_text()[-2000:]
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(ready):
                    with socket.create_connection(("127.0.0.1", b.mqtt_port), timeout=1):
                        return
            await asyncio.sleep(0.1)


class Device:
    """A paho-mqtt client: MQTT 3.1.1 over TLS, API key as password, QoS 1 uplinks."""

    def __init__(self, device_id: str, api_key: str, ca: Path) -> None:
        self.device_id = device_id
        self.api_key = api_key
        self.ca = ca
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acked: list[int] = []
        self.client: Any = None

    def connect(self, port: int, timeout: float = 10) -> int | None:
        self.connected.clear()
        self.disconnected.clear()
        self.connack = None
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        c.tls_set(ca_certs=str(self.ca))
        c.username_pw_set("device", self.api_key)
        c.reconnect_delay_set(60, 60)  # no automatic reconnects: the test decides

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.connack = int(getattr(reason, "value", reason))
            if self.connack == 0:
                self.connected.set()
            else:
                self.disconnected.set()

        c.on_connect = on_connect
        c.on_disconnect = lambda *_a: self.disconnected.set()
        c.on_publish = lambda _c, _u, mid, *_a: self.acked.append(mid)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        deadline = time.monotonic() + timeout
        while not (self.connected.is_set() or self.disconnected.is_set()):
            if time.monotonic() > deadline:
                raise AssertionError("no CONNACK")
            time.sleep(0.01)
        return self.connack

    def publish(self, n: int, timeout: float = 10) -> None:
        info = self.client.publish(f"devices/{self.device_id}/up/telemetry", f'{{"n":{n}}}', qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published()

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            with contextlib.suppress(Exception):
                self.client.disconnect()


def metric(b: Broker, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{b.health_port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_node_killed_device_reconnects_elsewhere_and_revocation_applies(
    brokers: Callable[[str], Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    pki: dict[str, Path],
) -> None:
    a, b = brokers("node-a"), brokers("node-b")
    await asyncio.gather(wait_ready(a), wait_ready(b))
    out = await registry.provision("fo", "SN-1", CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    dev = Device(out.device.device_id, out.api_key.api_key, pki["ca"])
    try:
        assert await asyncio.to_thread(dev.connect, a.mqtt_port) == 0
        await asyncio.to_thread(dev.publish, 1)

        a.proc.kill()  # SIGKILL: no goodbye to the device
        killed_at = time.monotonic()
        await asyncio.to_thread(a.proc.wait, 5)
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "the device noticed nothing"
        dev.close()

        # The load balancer sends the device to the surviving node.
        assert await asyncio.to_thread(dev.connect, b.mqtt_port) == 0
        reconnected_after = time.monotonic() - killed_at
        await asyncio.to_thread(dev.publish, 2)
        entries = await redis.xrange(keys.uplink_stream("fo"))
        assert [e[1]["payload"] for e in entries] == ['{"n":1}', '{"n":2}']

        revoked_at = time.monotonic()
        await registry.revoke_api_key("fo", out.api_key.key_id, actor="test")
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "revocation did not apply"
        revoke_to_disconnect = time.monotonic() - revoked_at
        dev.close()
        assert await asyncio.to_thread(dev.connect, b.mqtt_port) not in (0, None)
        orders = await asyncio.to_thread(
            metric,
            b,
            'corem_disconnect_orders_total{reason="credential_revoked",transport="mqtt"}',
        )
        assert orders == 1
        print(
            f"\nnode SIGKILL: device reconnected through the other node "
            f"{reconnected_after:.2f}s after the kill; revoke -> disconnect "
            f"{revoke_to_disconnect * 1000:.0f} ms; acked uplinks stored: {len(entries)}/2"
        )
    finally:
        dev.close()
