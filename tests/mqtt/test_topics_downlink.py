"""Topic ACL and downlink delivery on the real listener (mosquitto clients, the CLI, real Redis)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from corem_ingress.adapters.mqtt import codec
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    RawClient,
    client_ssl,
    connect_packet,
    provision_x509,
    run,
    tls_args,
    wait_for,
)

pytestmark = pytest.mark.integration


async def stream(redis, tenant):  # type: ignore[no-untyped-def]
    return await redis.xrange(f"corem:uplink:{{{tenant}}}")


async def start_sub(pki, dev, port, topic, *extra):  # type: ignore[no-untyped-def]
    """mosquitto_sub, started and subscribed; returns (process, SUBACK line)."""
    proc = await asyncio.create_subprocess_exec(
        "stdbuf",  # line-buffered stdout: we read the SUBACK line while it runs
        "-oL",
        MOSQUITTO_SUB,
        *tls_args(pki, dev),
        "-p",
        str(port),
        "-i",
        dev.device_id,
        "-t",
        topic,
        "-q",
        "1",
        "-v",
        "-d",
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "mosquitto_sub exited before subscribing"
            if line.startswith("Subscribed"):
                return proc, line


async def finish(proc, timeout=15):  # type: ignore[no-untyped-def]
    """Wait (bounded) for the process to exit; returns (code, rest of its output)."""
    try:
        out = await asyncio.wait_for(proc.stdout.read(), timeout)
        await asyncio.wait_for(proc.wait(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode()


async def cli_downlink(redis_url, tenant, device, kind, payload, *flags):  # type: ignore[no-untyped-def]
    env = {**os.environ, "COREM_REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        "downlink",
        "--tenant",
        tenant,
        "--device",
        device,
        "--kind",
        kind,
        "--payload",
        payload,
        *flags,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("victim_tenant", ["acme", "beta"])
async def test_publish_outside_own_topics_disconnects_and_stores_nothing(
    mqtt_node, registry, pki, redis, victim_tenant
):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    thief = await provision_x509(registry, pki, "acme", "hw-thief")
    victim = await provision_x509(registry, pki, victim_tenant, "hw-victim")
    topics = [
        f"devices/{victim.device_id}/up/telemetry",  # another device (or tenant)
        f"devices/{thief.device_id}/up/firmware",  # not an uplink kind
        f"devices/{thief.device_id}/down/config",  # the downlink side
    ]
    for topic in topics:
        _code, out = await run(
            [
                MOSQUITTO_PUB,
                *tls_args(pki, thief),
                "-p",
                str(listener.port),
                "-i",
                thief.device_id,
                "-t",
                topic,
                "-m",
                "x",
                "-q",
                "1",
                "-d",
            ]
        )
        assert "received CONNACK (0)" in out and "received PUBACK" not in out, out
    assert listener.stats["acl_violations"] == len(topics)
    assert await stream(redis, "acme") == [] and await stream(redis, victim_tenant) == []


async def test_forbidden_subscribe_gets_0x80_and_stays_connected(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-s")
    other = await provision_x509(registry, pki, "acme", "hw-o")
    forbidden = (f"devices/{other.device_id}/down/#", "#", f"devices/{dev.device_id}/up/#")
    for topic in forbidden:
        proc, line = await start_sub(pki, dev, listener.port, topic)
        assert line.strip().endswith(": 128"), line
        await finish(proc)  # mosquitto_sub gives up when every filter is refused
    # The broker does not disconnect for it: one allowed and one refused, then PINGREQ.
    raw = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await raw.send(connect_packet(dev.device_id))
    assert await raw.read_packet() == b"\x20\x02\x00\x00"
    await raw.send(
        codec.encode_subscribe(7, [(f"devices/{dev.device_id}/down/#", 2), (forbidden[0], 0)])
    )
    assert await raw.read_packet() == b"\x90\x04\x00\x07\x01\x80"
    await raw.send(b"\xc0\x00")
    assert await raw.read_packet() == b"\xd0\x00"
    await raw.close()
    assert listener.stats["subscribe_denied"] == 4


async def test_downlink_from_cli_reaches_the_subscriber(mqtt_node, registry, pki, redis_url):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-d")
    proc, line = await start_sub(
        pki, dev, listener.port, f"devices/{dev.device_id}/down/#", "-C", "2"
    )
    assert line.strip().endswith(": 1"), line  # granted QoS 1
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    await cli_downlink(redis_url, "acme", dev.device_id, "config", '{"rate": 5}', "--json")
    await cli_downlink(redis_url, "acme", dev.device_id, "reboot", "now", "--qos", "0")
    code, out = await finish(proc)
    assert code == 0, out
    assert f"devices/{dev.device_id}/down/config " + '{"rate":5}' in out
    assert f"devices/{dev.device_id}/down/reboot now" in out
    assert "received PUBLISH (d0, q1" in out and "received PUBLISH (d0, q0" in out
    assert listener.stats["downlinks"] == 2


async def test_downlink_only_to_matching_subscriptions(mqtt_node, registry, pki, redis_url):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-m")
    proc, _line = await start_sub(
        pki, dev, listener.port, f"devices/{dev.device_id}/down/config", "-C", "1"
    )
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))
    await cli_downlink(redis_url, "acme", dev.device_id, "other", "no")
    await cli_downlink(redis_url, "acme", dev.device_id, "config", "yes")
    code, out = await finish(proc)
    assert code == 0 and "down/config yes" in out and "down/other" not in out
    assert listener.stats["downlinks"] == 1
