"""Redis SIGKILLed and restarted under HTTP load: what devices got 202 Accepted for vs what
the stream holds. Real HTTP clients (aiohttp, one keep-alive session per device, API key)
against a node with the HTTP listener as built. A POST answered with anything but 202 (503
with Retry-After while Redis is down) is sent again after 0.1 s.

While Redis is down a device whose key the resolver's cache cannot vouch for (provisioned,
never used on this node) posts: it must get 503 (never 202, and not 401: the key is
valid). Once Redis is back it must get 202, and the load must resume by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from corem_ingress.adapters import http
from corem_ingress.app import Node
from corem_ingress.core.identity import CredentialKind
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.conftest import make_config

pytestmark = pytest.mark.integration

DEVICES = 5
A = "cli:faults-http"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    (tmp_path / "r").mkdir()
    server = EmbeddedRedis(data_dir=tmp_path / "r", persist=True).start()
    yield server
    server.close()


async def post(session: aiohttp.ClientSession, base: str, device_id: str, key: str, n: int) -> int:
    try:
        async with session.post(
            f"{base}/api/v1/devices/{device_id}/uplink",
            headers={"X-API-Key": key},
            json={"kind": "telemetry", "payload": {"n": n}},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


class Load:
    def __init__(self, device_id: str, key: str, base: str) -> None:
        self.device_id = device_id
        self.key = key
        self.base = base
        self.acked: list[int] = []
        self.statuses: dict[int, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                status = await post(session, self.base, self.device_id, self.key, n)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 202:
                    self.acked.append(n)
                    n += 1
                else:
                    await asyncio.sleep(0.1)


async def test_redis_killed_under_http_load(durable_redis: EmbeddedRedis, kek_env: str) -> None:
    cfg = make_config(durable_redis.url, redis={"socket_timeout_s": 0.5})
    node = Node(cfg, listener_factories=[http.build])
    await node.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        assert node.bus is not None and node.services is not None
        async with asyncio.timeout(10):
            await node.bus.subscribed.wait()
        (listener,) = node.listeners
        base = f"http://127.0.0.1:{listener.port}"
        registry = node.services.registry
        loads = []
        for i in range(DEVICES):
            res = await registry.provision("fhttp", f"SN-{i}", CredentialKind.API_KEY, actor=A)
            assert res.api_key is not None
            loads.append(Load(res.device.device_id, res.api_key.api_key, base))
        fresh = await registry.provision("fhttp", "SN-fresh", CredentialKind.API_KEY, actor=A)
        assert fresh.api_key is not None
        fresh_id, fresh_key = fresh.device.device_id, fresh.api_key.api_key

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
        async with aiohttp.ClientSession() as session:
            fresh_while_down = await post(session, base, fresh_id, fresh_key, -1)
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - killed_at)))
        acked_while_down = sum(len(ld.acked) for ld in loads) - acked_at_kill
        await asyncio.to_thread(durable_redis.start)
        restarted_at = time.monotonic()
        target = sum(len(ld.acked) for ld in loads) + 10 * DEVICES
        async with asyncio.timeout(30):
            while sum(len(ld.acked) for ld in loads) < target:
                await asyncio.sleep(0.05)
        resumed_after = time.monotonic() - restarted_at
        async with aiohttp.ClientSession() as session:
            fresh_after = await post(session, base, fresh_id, fresh_key, -2)
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)

        entries = await node.redis.xrange(node.keys.uplink_stream("fhttp"))
        entries = [(i, f) for i, f in entries if f["device_id"] != fresh_id]  # the load's only
        stored = {(f["device_id"], f["payload"]) for _id, f in entries}
        acked = {(ld.device_id, f'{{"n":{n}}}') for ld in loads for n in ld.acked}
        lost = acked - stored
        statuses: dict[int, int] = {}
        for ld in loads:
            for status, count in ld.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        print(
            f"\nredis SIGKILL under HTTP load: devices={DEVICES} acked_202={len(acked)} "
            f"stored={len(entries)} unique_stored={len(stored)} lost={len(lost)} "
            f"statuses={dict(sorted(statuses.items()))} "
            f"acked_while_down={acked_while_down} down_for={restarted_at - killed_at:.2f}s "
            f"resumed_after_restart={resumed_after:.2f}s "
            f"uncached_key_while_down={fresh_while_down} uncached_key_after={fresh_after}"
        )
        assert lost == set()
        assert acked_while_down == 0
        assert fresh_while_down == 503
        assert fresh_after == 202
        assert set(statuses) <= {202, 503}
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop()
