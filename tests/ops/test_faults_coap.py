"""Redis SIGKILLed and restarted under CoAP load: what devices got 2.04 Changed for vs what
the stream holds. Real DTLS 1.2 PSK devices (the simulator's in-process OpenSSL client over
loopback UDP) against a node with the CoAP listener as built. A device whose POST gets no
2.04 (5.03 with Max-Age, no answer, or its session closed) sends the same message again,
on a new session if needed.

While Redis is down, a device whose credential the resolver's cache cannot vouch for
(provisioned, never seen by this node) tries to handshake: it must be refused. Once Redis
is back it must get in, and the load must resume without any help.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress import metrics
from corem_ingress.adapters import coap
from corem_ingress.app import Node
from corem_ingress.core.identity import CredentialKind
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from tests.conftest import make_config

pytestmark = pytest.mark.integration

DEVICES = 5
A = "cli:faults-coap"
_mids = iter(range(1, 60_000))


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    (tmp_path / "r").mkdir()
    server = EmbeddedRedis(data_dir=tmp_path / "r", persist=True).start()
    yield server
    server.close()


async def post(client: AsyncDtlsClient, payload: bytes, timeout: float) -> Code | None:
    """One confirmable POST /up/telemetry; the response code, or None without an answer."""
    m = Message(code=Code.POST, payload=payload)
    m.mtype, m.mid, m.token = CON, next(_mids), os.urandom(4)
    m.opt.uri_path = ("up", "telemetry")
    client.send(m.encode())
    try:
        async with asyncio.timeout(timeout):
            while True:
                resp = Message.decode(await client.recv(timeout=timeout))
                if resp.token == m.token:
                    return resp.code
    except (TimeoutError, ConnectionError):
        return None


def sample(reason: str) -> float:
    labels = {"transport": "coap", "reason": reason}
    return metrics.REGISTRY.get_sample_value("corem_auth_failures_total", labels) or 0.0


class Load:
    """One device: POST n until 2.04, then n + 1; reconnect when the session is gone."""

    def __init__(self, device_id: str, identity: str, key: bytes, port: int) -> None:
        self.device_id = device_id
        self.ctx = psk_context(identity.encode(), key)
        self.port = port
        self.acked: list[int] = []
        self.unacked_attempts = 0
        self.unavailable = 0
        self.handshakes = 0
        self.failed_handshakes = 0

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        client: AsyncDtlsClient | None = None
        while not stop.is_set():
            if client is None or client.client.closed or client.client.failed:
                if client is not None:
                    client.close()
                client = None
                try:
                    c = await AsyncDtlsClient.connect(self.ctx, self.port, timeout=3)
                except TimeoutError:
                    self.failed_handshakes += 1
                    continue
                if not c.client.done:
                    c.close()
                    self.failed_handshakes += 1
                    await asyncio.sleep(0.1)
                    continue
                client = c
                self.handshakes += 1
            code = await post(client, b'{"n":%d}' % n, timeout=2.0)
            if code == Code.CHANGED:
                self.acked.append(n)
                n += 1
                continue
            self.unacked_attempts += 1
            if code == Code.SERVICE_UNAVAILABLE:
                self.unavailable += 1
                await asyncio.sleep(0.1)  # Max-Age says 5 s; the test is impatient
            elif code is None:
                client.close()  # no answer: start a new session
                client = None
        if client is not None:
            client.close()


async def test_redis_killed_under_coap_load(
    durable_redis: EmbeddedRedis, kek_env: str, pki: dict[str, Path]
) -> None:
    section = {
        "host": "127.0.0.1",
        "server_cert": str(pki["server"]),
        "server_key": str(pki["server_key"]),
        "client_ca_files": [str(pki["ca"])],
        "handshake_rate_per_s": 0.0,
        "ack_timeout_s": 0.5,
    }
    cfg = make_config(durable_redis.url, redis={"socket_timeout_s": 0.5}, coap=section)
    node = Node(cfg, listener_factories=[coap.build])
    await node.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        assert node.bus is not None and node.services is not None
        async with asyncio.timeout(10):
            await node.bus.subscribed.wait()
        (listener,) = node.listeners
        registry = node.services.registry
        loads = []
        for i in range(DEVICES):
            res = await registry.provision(
                "fcoap", f"SN-{i}", CredentialKind.PSK, actor=A, psk_identity=f"fcoap:{i}"
            )
            assert res.psk is not None
            loads.append(
                Load(res.device.device_id, res.psk.psk_identity, res.psk.psk, listener.port)
            )
        fresh = await registry.provision(
            "fcoap", "SN-fresh", CredentialKind.PSK, actor=A, psk_identity="fcoap:fresh"
        )
        assert fresh.psk is not None
        fresh_ctx = psk_context(b"fcoap:fresh", fresh.psk.psk)

        unavailable0 = sample("unavailable")
        tasks = [asyncio.ensure_future(ld.run(stop)) for ld in loads]
        async with asyncio.timeout(20):
            while sum(len(ld.acked) for ld in loads) < 20 * DEVICES:
                await asyncio.sleep(0.05)

        assert durable_redis.proc is not None
        durable_redis.proc.kill()
        durable_redis.proc.wait(timeout=5)
        killed_at = time.monotonic()
        await asyncio.sleep(0.3)
        acked_at_kill = sum(len(ld.acked) for ld in loads)
        # A credential the cache cannot vouch for, while Redis is down: refused.
        attempt = await AsyncDtlsClient.connect(fresh_ctx, listener.port, timeout=3)
        fresh_in_while_down = attempt.client.done
        attempt.close()
        # Refused as "unavailable", not held against the source address by the throttle.
        unavailable_refusals = sample("unavailable") - unavailable0
        throttle_sources_while_down = len(node.services.access.throttle)
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - killed_at)))
        acked_while_down = sum(len(ld.acked) for ld in loads) - acked_at_kill
        await asyncio.to_thread(durable_redis.start)
        restarted_at = time.monotonic()
        target = sum(len(ld.acked) for ld in loads) + 10 * DEVICES
        async with asyncio.timeout(30):
            while sum(len(ld.acked) for ld in loads) < target:
                await asyncio.sleep(0.05)
        resumed_after = time.monotonic() - restarted_at
        # Redis is back: the same device gets in.
        attempt = await AsyncDtlsClient.connect(fresh_ctx, listener.port, timeout=5)
        fresh_in_after = attempt.client.done
        attempt.close()
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)

        entries = await node.redis.xrange(node.keys.uplink_stream("fcoap"))
        stored = {(f["device_id"], f["payload"]) for _id, f in entries}
        acked = {(ld.device_id, f'{{"n":{n}}}') for ld in loads for n in ld.acked}
        lost = acked - stored
        print(
            f"\nredis SIGKILL under CoAP/DTLS load: devices={DEVICES} acked_2.04={len(acked)} "
            f"stored={len(entries)} unique_stored={len(stored)} lost={len(lost)} "
            f"unacked_attempts={sum(ld.unacked_attempts for ld in loads)} "
            f"5.03={sum(ld.unavailable for ld in loads)} "
            f"acked_while_down={acked_while_down} down_for={restarted_at - killed_at:.2f}s "
            f"resumed_after_restart={resumed_after:.2f}s "
            f"re_handshakes={sum(ld.handshakes for ld in loads) - DEVICES} "
            f"failed_handshakes={sum(ld.failed_handshakes for ld in loads)} "
            f"uncached_device_in_while_down={fresh_in_while_down} "
            f"uncached_device_in_after={fresh_in_after} "
            f"auth_failures_unavailable={unavailable_refusals:.0f} "
            f"throttle_sources_while_down={throttle_sources_while_down}"
        )
        assert lost == set()
        assert acked_while_down == 0
        assert not fresh_in_while_down
        assert fresh_in_after
        assert unavailable_refusals >= 1
        assert throttle_sources_while_down == 0
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop()
