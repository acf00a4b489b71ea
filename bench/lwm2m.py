"""LwM2M benchmark: registrations/s and notifications/s, with server CPU per operation.

    .venv/bin/python -m bench.lwm2m [--devices N] [--notifications N] [--concurrency C]

Loopback only. The server is a real ``python -m corem_ingress serve`` process (CoAP/DTLS
listener with LwM2M, private redis-server); the load generator is this process (the
simulator's LwM2M client, ``corem_ingress.sim.lwm2m_device``, over the in-process pyOpenSSL
DTLS client, PSK). Server CPU is read from /proc/PID/stat (utime+stime) around each phase.

* register: N devices (DTLS sessions already open) send Register, C at a time; each
  registration is written to Redis, then the server observes /3303/0 on the device and
  appends the first value as an uplink -- all of that is in the figure;
* update: each device sends an Update (lifetime refresh), C at a time;
* notify: the devices send Observe notifications (NON) of /3303/0; the figure counts
  uplinks stored in Redis (decoded SenML JSON -> uplink envelope -> XADD);
* read: operator Reads of /3/0/0 routed through Redis (``Lwm2mRouter``) to the server,
  which asks the device over its session, C at a time (server CPU only; the caller's
  Redis round trips are in this process).

Prints a table and one JSON line. Every phase is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.coap import coap_broker_env
from bench.procstat import cpu_seconds
from corem_ingress import devcerts
from corem_ingress.app import redis_client
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.embedded_redis import EmbeddedRedis, free_port
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.sim.devices import Target
from corem_ingress.sim.lwm2m_device import Lwm2mDevice
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore
from corem_ingress.store.registry import Registry

HOST = "127.0.0.1"
TENANT = "bench"


async def provision(registry: Registry, n: int) -> list[tuple[str, str, str, bytes]]:
    out = []
    for i in range(n):
        hw = f"LWM2M-BENCH-{i:05d}"
        key = f"bench-lwm2m-{i:05d}".encode().ljust(32, b"k")
        res = await registry.provision(
            TENANT,
            hw,
            CredentialKind.PSK,
            actor="bench",
            psk_identity=f"{TENANT}:lwb-{i}",
            psk_bytes=key,
        )
        assert res.psk is not None
        out.append((res.device.device_id, hw, res.psk.psk_identity, res.psk.psk))
    return out


async def in_batches(items: list[Any], concurrency: int, fn: Any) -> int:
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(item: Any) -> None:
        nonlocal ok
        async with sem:
            if await fn(item):
                ok += 1

    await asyncio.gather(*(one(i) for i in items))
    return ok


class Phase:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Phase:
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        self.wall = time.perf_counter() - self.t0

    def result(self, n: int) -> dict[str, float]:
        return {
            "n": n,
            "per_s": n / self.wall if self.wall else 0.0,
            "server_cpu_us": self.cpu / n * 1e6 if n else 0.0,
        }


async def wait_stream(redis: Any, key: str, target: int, timeout: float) -> int:
    until = time.monotonic() + timeout
    length = 0
    while time.monotonic() < until:
        length = int(await redis.xlen(key))
        if length >= target:
            return length
        await asyncio.sleep(0.01)
    return length


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-lwm2m-"))
    ca = devcerts.make_ca("bench CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp / "server.pem", tmp / "server.key")
    redis_server = EmbeddedRedis().start()
    kek = generate_kek_line("bench")
    port = free_port()
    env = {
        **coap_broker_env(tmp, redis_server.url, kek, port),
        "COREM_NODE_ID": "bench-node",
        "COREM_LWM2M_OBSERVE_PATHS": "/3303/0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis = redis_client(redis_server.url)
    devices: list[Lwm2mDevice] = []
    results: dict[str, Any] = {}
    try:
        keys = KeySchema("corem")
        registry = Registry(
            redis, keys, keyring=KeyRing.parse(kek), api_key_overlap=60, api_key_overlap_max=3600
        )
        creds = await provision(registry, args.devices)
        target = Target(HOST, port, str(tmp / "ca.pem"))
        for _device_id, hw, ident, psk in creds:
            devices.append(Lwm2mDevice(hw, target, endpoint=hw, psk_identity=ident, psk=psk))
        async with asyncio.timeout(args.timeout):
            # The server comes up; then every DTLS session is opened (not measured).
            while True:
                try:
                    await devices[0].open_session()
                    break
                except Exception:
                    if proc.poll() is not None:
                        raise RuntimeError("the server exited") from None
                    await asyncio.sleep(0.2)
            await in_batches(devices[1:], args.concurrency, lambda d: d.open_session())
            print(f"{len(devices)} DTLS sessions open", file=sys.stderr)

            async def register(d: Lwm2mDevice) -> bool:
                return bool((await d.register()).code.dotted == "2.01")

            stream = keys.uplink_stream(TENANT)
            with Phase(proc.pid) as ph:
                ok = await in_batches(devices, args.concurrency, register)
                # ... until the server has observed each device and stored its first value.
                first = await wait_stream(redis, stream, ok, 20.0)
            results["register"] = ph.result(ok)
            print(f"registered {ok}, first values {first}", file=sys.stderr)

            async def update(d: Lwm2mDevice) -> bool:
                return bool((await d.update()).code.dotted == "2.04")

            with Phase(proc.pid) as ph:
                ok = await in_batches(devices, args.concurrency, update)
            results["update"] = ph.result(ok)

            observed = [d for d in devices if d.observed]
            base = int(await redis.xlen(stream))
            per_device = max(1, args.notifications // max(1, len(observed)))
            total = per_device * len(observed)
            with Phase(proc.pid) as ph:
                sent = lost = 0

                async def window() -> None:
                    # Closed loop: at most --window notifications not yet stored (UDP drops
                    # NON messages once the server's socket buffer is full); a stall of 1 s
                    # counts what is in flight as lost.
                    nonlocal lost
                    stalled_since, last = time.monotonic(), -1
                    while (done := int(await redis.xlen(stream)) - base) < sent - args.window:
                        if done != last:
                            stalled_since, last = time.monotonic(), done
                        elif time.monotonic() - stalled_since > 1.0:
                            lost += sent - lost - done
                            return
                        await asyncio.sleep(0.001)

                for i in range(per_device):
                    for j, d in enumerate(observed):
                        if j % 10 == 0:
                            await window()
                        d.client.set_temperature(20.0 + (i % 40) / 4)
                        sent += d.notify([Lwm2mPath.parse("/3303/0/5700")])
                stored = await wait_stream(redis, stream, base + total - lost, 10.0) - base
            results["notify"] = ph.result(stored)
            results["notify"].update(sent=sent, lost=lost)

            router = Lwm2mRouter(redis, keys)
            store = Lwm2mStore(redis, keys)
            regs = [await store.get_by_device(c[0]) for c in creds]

            async def read(reg: Any) -> bool:
                if reg is None:
                    return False
                response = await router.call(reg, ops.read("/3/0/0"), timeout_s=10)
                return response.code == "2.05"

            reads = regs * max(1, args.reads // max(1, len(regs)))
            with Phase(proc.pid) as ph:
                ok = await in_batches(reads, args.concurrency, read)
            results["read"] = ph.result(ok)
    finally:
        for d in devices:
            d_channel = d.channel
            d.channel = None
            if d_channel is not None:
                d_channel.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await redis.aclose()
        redis_server.close()
    return {
        "devices": args.devices,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        **results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--notifications", type=int, default=10_000)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--window", type=int, default=100, help="notifications in flight")
    ap.add_argument("--timeout", type=float, default=120.0, help="bound on the whole run")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(f"{'phase':<10}{'n':>8}{'ops/s':>10}{'server CPU/op':>16}")
    for phase in ("register", "update", "notify", "read"):
        r = out.get(phase)
        if r:
            print(f"{phase:<10}{r['n']:>8}{r['per_s']:>10.0f}{r['server_cpu_us']:>13.0f} us")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
