"""Faults with real processes: Redis killed (SIGKILL) and restarted under uplink load.

The load is the foundation's uplink path as adapters use it: ``UplinkStore.append`` and an
acknowledgement only when it returned. Checked: no acknowledged uplink is lost (acked vs
what the stream holds), no authentication the cache cannot vouch for while Redis is down,
and the node recovers on its own (bus re-subscribed, /readyz 200). The figures are printed
(``pytest -s``) and reported in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from corem_ingress.app import Node
from corem_ingress.core import api_keys
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.conftest import make_config

A = "cli:faults"
DEVICES = 20


class Device:
    """Sends uplinks one at a time; keeps a message until it is acknowledged (retries)."""

    def __init__(self, identity: DeviceIdentity) -> None:
        self.identity = identity
        self.acked: list[str] = []
        #: Every message id this device tried to send (acknowledged or not).
        self.sent: set[str] = set()
        self.failures = 0

    async def run(self, node: Node, stop: asyncio.Event) -> None:
        assert node.services is not None
        pending: Uplink | None = None
        while not stop.is_set():
            if pending is None:
                pending = Uplink.new(
                    self.identity, Transport.MQTT, UplinkKind.TELEMETRY, {"n": len(self.acked)},
                    now=time.time(),
                )  # fmt: skip
            self.sent.add(pending.message_id)
            try:
                await node.services.uplinks.append(pending)
            except Unavailable:
                self.failures += 1
                await asyncio.sleep(0.05)  # not acknowledged: the device retries
                continue
            self.acked.append(pending.message_id)
            pending = None
            await asyncio.sleep(0.005)


async def test_redis_killed_and_restarted_under_load(
    durable_redis: EmbeddedRedis, kek_env: str
) -> None:
    node = Node(
        make_config(durable_redis.url, redis={"socket_timeout_s": 0.5}), listener_factories=[]
    )
    await node.start()
    try:
        assert node.bus is not None and node.services is not None
        s = node.services
        async with asyncio.timeout(10):
            await node.bus.subscribed.wait()
        devices = []
        for i in range(DEVICES):
            res = await s.registry.provision("faults", f"SN-{i}", CredentialKind.API_KEY, actor=A)
            assert res.api_key is not None
            devices.append(Device(await s.resolver.resolve_api_key(res.api_key.api_key)))
        unseen = await s.registry.provision("faults", "SN-unseen", CredentialKind.API_KEY, actor=A)
        assert unseen.api_key is not None

        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(d.run(node, stop)) for d in devices]
        await asyncio.sleep(0.5)
        acked_before = sum(len(d.acked) for d in devices)
        assert acked_before > 0

        assert durable_redis.proc is not None
        durable_redis.proc.kill()  # SIGKILL: no shutdown, no final fsync
        durable_redis.proc.wait(timeout=5)
        killed_at = time.monotonic()
        # Down: nothing the cache cannot vouch for authenticates.
        with pytest.raises(Unavailable):
            await s.resolver.resolve_api_key(unseen.api_key.api_key)
        with pytest.raises(Unavailable):
            await s.resolver.resolve_api_key(api_keys.generate())
        await asyncio.sleep(1.0)
        acked_while_down = sum(len(d.acked) for d in devices)
        down_ready = await node.ready_checks()

        await asyncio.to_thread(durable_redis.start)  # same port, same AOF
        restarted_at = time.monotonic()
        async with asyncio.timeout(20):
            while not all((await node.ready_checks()).values()):
                await asyncio.sleep(0.05)
        ready_after = time.monotonic() - restarted_at
        async with asyncio.timeout(20):
            while sum(len(d.acked) for d in devices) <= acked_while_down + DEVICES:
                await asyncio.sleep(0.05)
        resumed_after = time.monotonic() - restarted_at
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)

        entries = await node.redis.xrange(node.keys.uplink_stream("faults"))
        stored = [fields["message_id"] for _id, fields in entries]
        acked = [m for d in devices for m in d.acked]
        lost = set(acked) - set(stored)
        print(
            f"\nredis SIGKILL under load: devices={DEVICES} acked={len(acked)} "
            f"stored={len(stored)} unique_stored={len(set(stored))} lost={len(lost)} "
            f"not_acked_attempts={sum(d.failures for d in devices)} "
            f"acked_while_down={acked_while_down - acked_before} "
            f"down_for={restarted_at - killed_at:.2f}s ready_after_restart={ready_after:.2f}s "
            f"uplinks_resumed_after_restart={resumed_after:.2f}s resyncs={node.bus.resyncs}"
        )
        assert lost == set()
        assert down_ready["redis"] is False
        assert node.bus.resyncs >= 1  # the gap was noticed: cache dropped, sessions re-validated
        # The stream holds only what devices sent (a retried message may be stored twice if
        # its first append succeeded but the reply was lost: at-least-once).
        assert set(stored) <= {m for d in devices for m in d.sent}
        # Authentication resumes on its own.
        ident = await s.resolver.resolve_api_key(unseen.api_key.api_key)
        assert ident.device_id == unseen.device.device_id
    finally:
        await node.stop()
