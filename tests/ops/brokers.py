"""Real broker processes and a paho-mqtt device for fault tests (shared by tests/ops)."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from corem_ingress.embedded_redis import free_port
from tests.conftest import KEK_LINE


@dataclass
class Broker:
    name: str
    proc: subprocess.Popen[bytes]
    mqtt_port: int
    health_port: int
    log: Path
    coap_port: int | None = None
    http_port: int | None = None


def lb_ports(b: Broker) -> dict[int, int | None]:
    """The broker's port behind each of the shipped load balancer's ports (None: not run)."""
    return {8883: b.mqtt_port, 8080: b.http_port, 5684: b.coap_port}


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
) -> AsyncIterator[Callable[..., Broker]]:
    """Factory of ``corem-ingress serve`` processes: MQTT (and health) enabled; CoAP with
    ``coap=True``; HTTP only (no MQTT) with ``http=True``; ``env`` adds COREM_... settings."""
    started: list[Broker] = []

    def start(
        name: str,
        *,
        coap: bool = False,
        http: bool = False,
        env_extra: dict[str, str] | None = None,
    ) -> Broker:
        mqtt_port, health_port, coap_port = free_port(), free_port(), free_port()
        http_port = free_port()
        env = {
            **os.environ,
            "COREM_REDIS_URL": redis_url,
            "COREM_PSK_KEK": KEK_LINE,
            "COREM_NODE_ID": name,
            "COREM_SHUTDOWN_DEADLINE_S": "3",
            "COREM_STATE_DIR": str(tmp_path / f"state-{name}"),
            "COREM_LOGGING_FORMAT": "console",
            "COREM_HEALTH_PORT": str(health_port),
            "COREM_HTTP_ENABLED": "true" if http else "false",
            "COREM_HTTP_PORT": str(http_port),
            "COREM_HTTP_ADMIN_MODE": "off",
            "COREM_COAP_ENABLED": "true" if coap else "false",
            "COREM_COAP_PORT": str(coap_port),
            "COREM_COAP_SERVER_CERT": str(pki["server"]),
            "COREM_COAP_SERVER_KEY": str(pki["server_key"]),
            "COREM_COAP_CLIENT_CA_FILES": str(pki["ca"]),
            # Behind a load balancer every datagram comes from its address: no per-IP limit.
            "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
            "COREM_MQTT_PORT": str(mqtt_port),
            "COREM_MQTT_CLIENT_AUTH": "optional",
            "COREM_MQTT_SERVER_CERT": str(pki["server"]),
            "COREM_MQTT_SERVER_KEY": str(pki["server_key"]),
            "COREM_MQTT_CLIENT_CA_FILES": str(pki["ca"]),
            **(env_extra or {}),
        }
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corem_ingress", "serve"], env=env, stdout=out, stderr=out
            )
        broker = Broker(
            name,
            proc,
            mqtt_port,
            health_port,
            log,
            coap_port if coap else None,
            http_port if http else None,
        )
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
        """Serving, and its dependencies checked healthy (readiness alone ignores Redis)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{b.health_port}/readyz", timeout=1) as r:
            return bool(r.status == 200 and not json.loads(r.read())["degraded"])

    async with asyncio.timeout(timeout):
        while True:
            assert b.proc.poll() is None, b.log.read_text()[-2000:]
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(ready):
                    port = b.http_port if b.http_port is not None else b.mqtt_port
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
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
