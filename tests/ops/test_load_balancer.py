"""Through the shipped load balancer (deploy/nginx.conf run by a real nginx): two real
``corem-ingress serve`` nodes, one killed under a connected MQTT device. The device
reconnects to the same load-balancer address and lands on the surviving node; its uplinks
are stored and a revocation still disconnects it."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.ops.brokers import Broker, Device, lb_ports, metric, wait_ready
from tests.ops.nginx import BEHIND_NGINX, Nginx, addresses, render

pytestmark = pytest.mark.integration

LIVE = 'corem_sessions_live{tenant="lb",transport="mqtt"}'


async def test_node_killed_behind_nginx(
    brokers: Callable[[str], Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    pki: dict[str, Path],
    tmp_path: Path,
) -> None:
    a, b = brokers("node-a", env_extra=BEHIND_NGINX), brokers("node-b", env_extra=BEHIND_NGINX)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    by_name = {"node-a": a, "node-b": b}
    # HTTP and CoAP are not started here: their upstreams point at closed ports.
    backends, listens = addresses({"broker-a": lb_ports(a), "broker-b": lb_ports(b)})
    (tmp_path / "lb").mkdir()
    lb = Nginx(render(backends, listens, tmp_path / "lb"), tmp_path / "lb")
    lb.start(wait_port=listens[8883])
    out = await registry.provision("lb", "SN-LB", CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    dev = Device(out.device.device_id, out.api_key.api_key, pki["ca"])
    try:
        assert await asyncio.to_thread(dev.connect, listens[8883]) == 0
        await asyncio.to_thread(dev.publish, 1)
        holders = [n for n, br in by_name.items() if await asyncio.to_thread(metric, br, LIVE)]
        assert len(holders) == 1, holders
        first, survivor = by_name[holders[0]], by_name[({"node-a", "node-b"} - set(holders)).pop()]

        first.proc.kill()
        killed_at = time.monotonic()
        await asyncio.to_thread(first.proc.wait, 5)
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "the device noticed nothing"
        dev.close()
        # Same address as before: nginx finds the dead upstream and uses the other one.
        assert await asyncio.to_thread(dev.connect, listens[8883]) == 0
        reconnected_after = time.monotonic() - killed_at
        assert await asyncio.to_thread(metric, survivor, LIVE) == 1
        await asyncio.to_thread(dev.publish, 2)
        entries = await redis.xrange(keys.uplink_stream("lb"))
        assert [e[1]["payload"] for e in entries] == ['{"n":1}', '{"n":2}']

        revoked_at = time.monotonic()
        await registry.revoke_api_key("lb", out.api_key.key_id, actor="test")
        assert await asyncio.to_thread(dev.disconnected.wait, 10), "revocation did not apply"
        revoke_to_disconnect = time.monotonic() - revoked_at
        dev.close()
        assert await asyncio.to_thread(dev.connect, listens[8883]) not in (0, None)
        print(
            f"\nnode SIGKILL behind nginx: reconnected through the load balancer "
            f"{reconnected_after:.2f}s after the kill (to {survivor.name}); revoke -> "
            f"disconnect {revoke_to_disconnect * 1000:.0f} ms; uplinks stored {len(entries)}/2"
        )
    finally:
        dev.close()
        lb.stop()


COAP_CLIENT = "coap-client-openssl"
COAP_OK = 'corem_uplinks_total{outcome="ok",transport="coap"}'


async def coap_post(port: int, identity: str, key: bytes, payload: str) -> int:
    """One confirmable POST over DTLS (PSK) with libcoap's client; its exit code."""
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT, "-m", "post", "-B", "3", "-u", identity, "-k", key.decode(),
        "-e", payload, f"coaps://127.0.0.1:{port}/up/telemetry",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
    return proc.returncode if proc.returncode is not None else -1


async def test_coap_node_killed_behind_nginx_udp(
    brokers: Callable[..., Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    tmp_path: Path,
) -> None:
    a = brokers("node-a", coap=True, env_extra=BEHIND_NGINX)
    b = brokers("node-b", coap=True, env_extra=BEHIND_NGINX)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    assert a.coap_port is not None and b.coap_port is not None
    backends, listens = addresses({"broker-a": lb_ports(a), "broker-b": lb_ports(b)})
    (tmp_path / "lb").mkdir()
    lb = Nginx(render(backends, listens, tmp_path / "lb"), tmp_path / "lb")
    lb.start(wait_port=listens[8883])
    key = secrets.token_urlsafe(30).encode()  # printable: libcoap -k takes text
    out = await registry.provision(
        "lbudp", "SN-U", CredentialKind.PSK, actor="test", psk_identity="lbudp:1", psk_bytes=key
    )
    assert out.psk is not None
    try:
        await coap_post(listens[5684], "lbudp:1", key, '{"n":1}')
        assert await redis.xlen(keys.uplink_stream("lbudp")) == 1
        counts = {br.name: await asyncio.to_thread(metric, br, COAP_OK) for br in (a, b)}
        holder = a if counts["node-a"] == 1 else b
        survivor = b if holder is a else a
        assert counts[holder.name] == 1 and counts[survivor.name] == 0

        holder.proc.kill()
        killed_at = time.monotonic()
        await asyncio.to_thread(holder.proc.wait, 5)
        # UDP has no connect to fail: nginx learns that the upstream is gone from failed
        # exchanges (max_fails=2), so the device may need a few attempts (each one a fresh
        # DTLS handshake, as after any server loss).
        stream = keys.uplink_stream("lbudp")
        attempts = 0
        for attempts in range(1, 9):
            rc = await coap_post(listens[5684], "lbudp:1", key, '{"n":2}')
            # libcoap's exit code does not say whether an answer came: count what is stored.
            if await redis.xlen(stream) == 2:
                break
            print(f"attempt {attempts}: rc={rc}, not stored")
        else:
            raise AssertionError("never reached the surviving node through nginx")
        recovered_after = time.monotonic() - killed_at
        assert await asyncio.to_thread(metric, survivor, COAP_OK) == 1
        entries = await redis.xrange(stream)
        assert [e[1]["payload"] for e in entries] == ['{"n":1}', '{"n":2}']

        await registry.revoke_psk("lbudp", out.device.device_id, actor="test")
        await coap_post(listens[5684], "lbudp:1", key, '{"n":3}')
        assert await redis.xlen(stream) == 2  # refused: nothing stored
        print(
            f"\nCoAP node SIGKILL behind nginx (UDP): uplink accepted by {survivor.name} after "
            f"{attempts} attempt(s), {recovered_after:.2f}s after the kill; after revocation "
            "the PSK is refused"
        )
    finally:
        lb.stop()
