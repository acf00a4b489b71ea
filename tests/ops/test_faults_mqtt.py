"""Redis SIGKILLed and restarted under MQTT load: what devices got PUBACKed vs what the
stream holds. Real paho-mqtt devices (TLS, API key, QoS 1) against a node with the MQTT
listener as built; a device whose PUBLISH gets no PUBACK reconnects and sends it again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corem_ingress.adapters import mqtt
from corem_ingress.app import Node
from corem_ingress.core.identity import CredentialKind
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.conftest import make_config
from tests.ops.brokers import Device

pytestmark = pytest.mark.integration

DEVICES = 5
A = "cli:faults-mqtt"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    (tmp_path / "r").mkdir()
    server = EmbeddedRedis(data_dir=tmp_path / "r", persist=True).start()
    yield server
    server.close()


class Load:
    """One device's loop in a thread: publish n, wait for PUBACK, else reconnect and resend."""

    def __init__(self, dev: Device, port: int) -> None:
        self.dev = dev
        self.port = port
        self.acked: list[int] = []
        self.unacked_attempts = 0
        self.reconnects = 0

    def run(self, stop: threading.Event) -> None:
        n = 0
        connected = False
        while not stop.is_set():
            if not connected:
                self.dev.close()
                try:
                    connected = self.dev.connect(self.port, timeout=3) == 0
                except (AssertionError, OSError):
                    connected = False
                if not connected:
                    time.sleep(0.1)
                    continue
                self.reconnects += 1
            info = self.dev.client.publish(
                f"devices/{self.dev.device_id}/up/telemetry", f'{{"n":{n}}}', qos=1
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
            if info.is_published():
                self.acked.append(n)
                n += 1
            else:
                self.unacked_attempts += 1
                connected = False  # same n again on a new connection
        self.dev.close()


async def test_redis_killed_under_mqtt_load(
    durable_redis: EmbeddedRedis, kek_env: str, pki: dict[str, Path]
) -> None:
    section = {
        "server_cert": str(pki["server"]),
        "server_key": str(pki["server_key"]),
        "client_ca_files": [str(pki["ca"])],
        "client_auth": "optional",
    }
    cfg = make_config(durable_redis.url, redis={"socket_timeout_s": 0.5}, mqtt=section)
    node = Node(cfg, listener_factories=[mqtt.build])
    await node.start()
    stop = threading.Event()
    try:
        assert node.bus is not None and node.services is not None
        async with asyncio.timeout(10):
            await node.bus.subscribed.wait()
        (listener,) = node.listeners
        loads = []
        for i in range(DEVICES):
            res = await node.services.registry.provision(
                "fmq", f"SN-{i}", CredentialKind.API_KEY, actor=A
            )
            assert res.api_key is not None
            loads.append(
                Load(Device(res.device.device_id, res.api_key.api_key, pki["ca"]), listener.port)
            )
        threads = [asyncio.ensure_future(asyncio.to_thread(ld.run, stop)) for ld in loads]
        async with asyncio.timeout(20):
            while sum(len(ld.acked) for ld in loads) < 20 * DEVICES:
                await asyncio.sleep(0.05)

        assert durable_redis.proc is not None
        durable_redis.proc.kill()
        durable_redis.proc.wait(timeout=5)
        killed_at = time.monotonic()
        await asyncio.sleep(0.3)
        acked_at_kill = sum(len(ld.acked) for ld in loads)
        await asyncio.sleep(1.2)
        acked_while_down = sum(len(ld.acked) for ld in loads) - acked_at_kill
        await asyncio.to_thread(durable_redis.start)
        restarted_at = time.monotonic()
        target = sum(len(ld.acked) for ld in loads) + 10 * DEVICES
        async with asyncio.timeout(30):
            while sum(len(ld.acked) for ld in loads) < target:
                await asyncio.sleep(0.05)
        resumed_after = time.monotonic() - restarted_at
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*threads)

        entries = await node.redis.xrange(node.keys.uplink_stream("fmq"))
        stored = {(f["device_id"], f["payload"]) for _id, f in entries}
        acked = {(ld.dev.device_id, f'{{"n":{n}}}') for ld in loads for n in ld.acked}
        lost = acked - stored
        print(
            f"\nredis SIGKILL under MQTT load: devices={DEVICES} pubacked={len(acked)} "
            f"stored={len(entries)} unique_stored={len(stored)} lost={len(lost)} "
            f"unacked_attempts={sum(ld.unacked_attempts for ld in loads)} "
            f"pubacked_while_down={acked_while_down} down_for={restarted_at - killed_at:.2f}s "
            f"resumed_after_restart={resumed_after:.2f}s "
            f"reconnects={sum(ld.reconnects for ld in loads) - DEVICES}"
        )
        assert lost == set()
        assert acked_while_down == 0
    finally:
        stop.set()
        await node.stop()
