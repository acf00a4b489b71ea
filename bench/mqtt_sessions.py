"""Persistent-session reconnect storm: N devices with queued downlinks come back at once.

    .venv/bin/python bench/mqtt_sessions.py [--devices 10000] [--per-device 1] [--nodes 2]

Starts its own redis-server and ``--nodes`` brokers (``python -m corem_ingress serve``,
MQTT only, API-key passwords over TLS), all sharing that Redis. Then, bounded in count and
time (``--timeout`` per phase):

1. every device connects with CleanSession 0, subscribes to its ``devices/{id}/down/#``
   and disconnects (its session and subscription stay in Redis);
2. ``--per-device`` QoS 1 downlinks per device are queued (``DeviceSessions.enqueue``,
   the script the API and the CLI use); Redis ``used_memory`` before/after gives the
   memory per queued message (the queue entry, its share of the per-device keys);
3. the storm: every device reconnects (alternating nodes, ``--concurrency`` at once),
   expects CONNACK session-present 1, reads its downlinks, PUBACKs them and disconnects.
   Drain time = first CONNECT to last PUBACK; then every queue must be empty.

The load side is a raw asyncio MQTT client (``corem_ingress.adapters.mqtt.codec``).
Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mqtt import wait_port  # noqa: E402
from bench.procstat import cpu_seconds  # noqa: E402
from corem_ingress import devcerts  # noqa: E402
from corem_ingress.adapters.mqtt import codec  # noqa: E402
from corem_ingress.app import redis_client  # noqa: E402
from corem_ingress.core.downlink import Downlink  # noqa: E402
from corem_ingress.core.identity import CredentialKind  # noqa: E402
from corem_ingress.core.psk import KeyRing, generate_kek_line  # noqa: E402
from corem_ingress.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from corem_ingress.store.device_sessions import DeviceSessions  # noqa: E402
from corem_ingress.store.keys import KeySchema  # noqa: E402
from corem_ingress.store.registry import Registry  # noqa: E402

KEYS = KeySchema("corem")


def start_node(tmp: Path, i: int, redis_url: str, kek: str, cert: Path, key: Path, ca: Path) -> Any:
    port = free_port()
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": kek,
        "COREM_NODE_ID": f"bench-{i}",
        "COREM_STATE_DIR": str(tmp / f"state-{i}"),
        "COREM_LOGGING_FORMAT": "json",
        "COREM_LOGGING_LEVEL": "warning",
        "COREM_HEALTH_PORT": "0",
        "COREM_HTTP_ENABLED": "false",
        "COREM_COAP_ENABLED": "false",
        "COREM_MQTT_PORT": str(port),
        "COREM_MQTT_SERVER_CERT": str(cert),
        "COREM_MQTT_SERVER_KEY": str(key),
        "COREM_MQTT_CLIENT_CA_FILES": str(ca),
        "COREM_MQTT_CLIENT_AUTH": "optional",
        "COREM_MQTT_BACKLOG": "4096",
        "COREM_LIMITS_AUTH_FAIL_MAX": "0",
    }
    log = open(tmp / f"corem-{i}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"], env=env, stdout=log, stderr=log
    )
    wait_port(port, proc)
    return port, proc


async def provision(url: str, kek: str, n: int) -> list[tuple[str, str]]:
    client = redis_client(url)
    registry = Registry(
        client, KEYS, keyring=KeyRing.parse(kek), api_key_overlap=60, api_key_overlap_max=3600
    )
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, str]:
        async with sem:
            r = await registry.provision("bench", f"hw-{i}", CredentialKind.API_KEY, actor="b")
            assert r.api_key is not None
            return r.device.device_id, r.api_key.api_key

    out = await asyncio.gather(*(one(i) for i in range(n)))
    await client.aclose()
    return list(out)


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buf = reader, writer, b""

    async def packet(self) -> bytes:
        while True:
            framed = codec.frame(self.buf, 1 << 20)
            if framed is not None and len(self.buf) >= framed[2]:
                p, self.buf = self.buf[: framed[2]], self.buf[framed[2] :]
                return p
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed by broker")
            self.buf += chunk

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def session(port: int, ctx: ssl.SSLContext, device_id: str, api_key: str) -> Raw:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    raw = Raw(reader, writer)
    writer.write(
        codec.encode_connect(codec.Connect(4, device_id, False, 600, "device", api_key.encode()))
    )
    return raw


async def phase_subscribe(
    ports: list[int], ctx: ssl.SSLContext, devs: list[Any], conc: int
) -> None:
    sem = asyncio.Semaphore(conc)

    async def one(i: int, dev: tuple[str, str]) -> None:
        async with sem:
            for _attempt in range(10):  # CONNACK 3 (try later): a device retries, backing off
                raw = await session(ports[i % len(ports)], ctx, *dev)
                connack = await raw.packet()
                if connack != b"\x20\x02\x00\x03":
                    break
                RETRIES[1] += 1
                await raw.close()
                await asyncio.sleep(0.5)
            assert connack[:2] == b"\x20\x02" and connack[3] == 0, connack
            raw.writer.write(codec.encode_subscribe(1, [(f"devices/{dev[0]}/down/#", 1)]))
            assert (await raw.packet())[0] == 0x90
            await raw.close()

    await asyncio.gather(*(one(i, d) for i, d in enumerate(devs)))


async def phase_storm(
    ports: list[int], ctx: ssl.SSLContext, devs: list[Any], per: int, conc: int
) -> tuple[float, int, int]:
    """(drain seconds, downlinks received, of which duplicates)."""
    sem = asyncio.Semaphore(conc)
    got = 0
    dups = 0
    retries = 0

    async def one(i: int, dev: tuple[str, str]) -> None:
        nonlocal got, dups, retries
        async with sem:
            for _attempt in range(10):  # CONNACK 3 (try later): a device retries, backing off
                raw = await session(ports[(i + 1) % len(ports)], ctx, *dev)  # the other node
                connack = await raw.packet()
                if connack != b"\x20\x02\x00\x03":
                    break
                retries += 1
                await raw.close()
                await asyncio.sleep(0.5)
            assert connack == b"\x20\x02\x01\x00", connack  # session present
            seen: set[bytes] = set()
            while len(seen) < per:
                p = await raw.packet()
                if p[0] >> 4 != codec.PacketType.PUBLISH:
                    continue
                framed = codec.frame(p, 1 << 20)
                assert framed is not None
                body = p[framed[1] :]
                tlen = int.from_bytes(body[:2], "big")
                pid = body[2 + tlen : 4 + tlen]
                payload = body[4 + tlen :]
                if payload in seen:
                    dups += 1
                seen.add(payload)
                got += 1
                raw.writer.write(b"\x40\x02" + pid)
            await raw.writer.drain()
            await raw.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(devs)))
    RETRIES[0] = retries
    return time.perf_counter() - t0, got, dups


#: CONNACK 3 answers retried: [storm, subscribe phase]
RETRIES = [0, 0]


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    ca = devcerts.make_ca("bench CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    server = devcerts.issue(ca, "localhost", server=True)
    server.write(tmp / "server.pem", tmp / "server.key")
    kek = generate_kek_line("bench")
    redis = EmbeddedRedis().start()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, float] = {"devices": args.devices, "per_device": args.per_device}
    try:
        t0 = time.monotonic()
        devs = await provision(redis.url, kek, args.devices)
        print(f"setup: {args.devices} devices in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        ports = []
        for i in range(args.nodes):
            port, proc = start_node(
                tmp, i, redis.url, kek, tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"
            )
            ports.append(port)
            procs.append(proc)
        ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
        t0 = time.perf_counter()
        await asyncio.wait_for(phase_subscribe(ports, ctx, devs, args.concurrency), args.timeout)
        results["subscribe_phase_s"] = time.perf_counter() - t0
        client = redis_client(redis.url)
        await asyncio.sleep(1.0)  # session records closed (TTL set) by the nodes
        info = await client.info("memory")
        before = int(info["used_memory"])
        store = DeviceSessions(client, KEYS)
        now = time.time()
        sem = asyncio.Semaphore(8)  # within the client pool (no waits for a connection)

        async def enqueue(device_id: str, k: int) -> None:
            async with sem:
                d = Downlink.new(
                    "bench", device_id, "config", {"seq": k, "set": "x" * 16}, qos=1, now=now
                )
                out = await store.enqueue(d, queue_max=100, now=now)
                assert out.route == "queued", out

        t0 = time.perf_counter()
        await asyncio.gather(*(enqueue(d, k) for d, _key in devs for k in range(args.per_device)))
        results["enqueue_per_s"] = args.devices * args.per_device / (time.perf_counter() - t0)
        info = await client.info("memory")
        queued = args.devices * args.per_device
        results["redis_bytes_per_queued_msg"] = (int(info["used_memory"]) - before) / queued
        entry = await client.lindex(KEYS.downlink_queue(devs[0][0]), 0)
        results["queue_entry_bytes"] = len(entry or "")
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        drain, got, dups = await asyncio.wait_for(
            phase_storm(ports, ctx, devs, args.per_device, args.concurrency), args.timeout
        )
        results["storm_drain_s"] = drain
        results["storm_reconnects_per_s"] = args.devices / drain
        results["downlinks_received"] = got
        results["duplicates"] = dups
        results["connack3_retries"] = RETRIES[0]
        results["connack3_retries_first_visit"] = RETRIES[1]
        results["broker_cpu_s"] = sum(
            cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)
        )
        await asyncio.sleep(1.0)
        left = 0
        async for key in client.scan_iter(match="corem:dlq:*", count=1000):
            left += int(await client.llen(key))
        results["left_in_queues"] = left
        await client.aclose()
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--per-device", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (broker logs)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-sessions-"))
    try:
        results = asyncio.run(run(args, tmp))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:>12.1f}")
    print(json.dumps(results, sort_keys=True))
    return 0 if results.get("left_in_queues") == 0 and results.get("duplicates") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
