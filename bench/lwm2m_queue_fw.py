"""LwM2M queue mode and firmware pull benchmark, with server CPU per operation.

    .venv/bin/python -m bench.lwm2m_queue_fw [--devices N] [--queued K] [--image-kib S]

Loopback only. The server is a real ``python -m corem_ingress serve`` process (CoAP/DTLS
with LwM2M, private redis-server, ``lwm2m.queue_awake_s`` 0.3 s, 1024-byte firmware blocks);
the devices are the simulator's LwM2M client (PSK, ``b=UQ``, with object 5).

* enqueue: K operator Reads per sleeping device, queued in Redis (``OperatorCalls`` in this
  process, as the admin API does: the server does nothing yet);
* drain: every device sends an Update; the server sends it its queued Reads over the
  session and stores each result: ops/s from the first Update until the last result is
  stored, server CPU per queued request delivered;
* pull: one firmware campaign (pull) for every device: the devices fetch the image with
  Block2 from ``/fw/<token>``; blocks/s and server CPU per block served, from the campaign's
  start until every job succeeded (the Package URI write, observations and Execute are in
  the figure too: they are a few requests per device against hundreds of blocks).

Prints a table and one JSON line. Bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.coap import coap_broker_env
from bench.lwm2m import HOST, TENANT, Phase, in_batches, provision
from corem_ingress import devcerts
from corem_ingress.adapters.lwm2m.firmware_calls import FirmwareCalls
from corem_ingress.adapters.lwm2m.operator import OperatorCalls
from corem_ingress.app import redis_client
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.embedded_redis import EmbeddedRedis, free_port
from corem_ingress.lwm2m.queue import QueuePolicy
from corem_ingress.sim.devices import Target
from corem_ingress.sim.lwm2m_device import Lwm2mDevice
from corem_ingress.store.firmware import FirmwareStore
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore
from corem_ingress.store.lwm2m_queue import Lwm2mQueue
from corem_ingress.store.registry import Registry

BLOCK = 1024


async def until(check: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-lwm2m-q-"))
    ca = devcerts.make_ca("bench CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp / "server.pem", tmp / "server.key")
    redis_server = EmbeddedRedis().start()
    kek = generate_kek_line("bench")
    port = free_port()
    env = {
        **coap_broker_env(tmp, redis_server.url, kek, port),
        "COREM_NODE_ID": "bench-node",
        "COREM_LWM2M_OBSERVE_PATHS": "",
        "COREM_LWM2M_QUEUE_AWAKE_S": "0.3",
        "COREM_LWM2M_QUEUE_MAX_PER_DEVICE": str(args.queued),
        "COREM_LWM2M_FIRMWARE_BLOCK_SIZE": str(BLOCK),
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
            devices.append(
                Lwm2mDevice(
                    hw,
                    target,
                    endpoint=hw,
                    psk_identity=ident,
                    psk=psk,
                    binding="UQ",
                    firmware_update=True,
                    pull_block_size=BLOCK,
                )
            )
        store = Lwm2mStore(redis, keys)
        router = Lwm2mRouter(redis, keys)
        queue = Lwm2mQueue(redis, keys)
        calls = OperatorCalls(
            registry,
            store,
            router,
            queue=queue,
            queue_policy=QueuePolicy(max_per_device=args.queued),
        )
        async with asyncio.timeout(args.timeout):
            while True:
                try:
                    await devices[0].open_session()
                    break
                except Exception:
                    if proc.poll() is not None:
                        raise RuntimeError("the server exited") from None
                    await asyncio.sleep(0.2)
            await in_batches(devices[1:], 16, lambda d: d.open_session())
            await in_batches(devices, 16, lambda d: d.register())
            ids = [c[0] for c in creds]

            async def all_asleep() -> bool:
                return not any([await redis.exists(keys.lwm2m_awake(d)) for d in ids])

            await until(all_asleep, 10)
            # -- enqueue ------------------------------------------------------------------
            t0 = time.perf_counter()
            request_ids: list[str] = []
            for _ in range(args.queued):
                for d in ids:
                    out = await calls.call(TENANT, d, "read", {"path": "/3/0/0"})
                    assert out["status"] == "queued", out
                    request_ids.append(out["request_id"])
            wall = time.perf_counter() - t0
            results["enqueue"] = {"n": len(request_ids), "per_s": len(request_ids) / wall}

            async def all_done() -> bool:
                done = 0
                for rid in request_ids:
                    item = await queue.get(rid)
                    done += item is not None and item.status.final
                return done == len(request_ids)

            with Phase(proc.pid) as ph:
                await in_batches(devices, 16, lambda d: d.update())
                await until(all_done, args.timeout, every=0.02)
            results["drain"] = ph.result(len(request_ids))
            # -- firmware pull --------------------------------------------------------------
            image = os.urandom(args.image_kib * 1024)
            fw = FirmwareStore(redis, keys)
            fcalls = FirmwareCalls(registry, store, router, fw, max_bytes=len(image))
            uploaded = await fcalls.upload(TENANT, "bench", "1", image)
            blocks = math.ceil(len(image) / BLOCK) * len(devices)
            with Phase(proc.pid) as ph:
                started = await fcalls.start(TENANT, uploaded["image_id"], ids, "pull")

                async def finished() -> bool:
                    view = await fcalls.campaign(TENANT, started["campaign_id"])
                    c = view["counts"]
                    return bool(c["succeeded"] + c["failed"] == len(ids))

                await until(finished, args.timeout, every=0.05)
            view = await fcalls.campaign(TENANT, started["campaign_id"])
            results["pull"] = ph.result(blocks)
            results["pull"].update(
                image_bytes=len(image),
                succeeded=view["counts"]["succeeded"],
                blocks_fetched=sum(d.pulled_blocks for d in devices),
            )
    finally:
        for d in devices:
            channel, d.channel = d.channel, None
            if channel is not None:
                channel.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await redis.aclose()
        redis_server.close()
    return {"devices": args.devices, "queued_per_device": args.queued, **results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--queued", type=int, default=8, help="queued Reads per device")
    ap.add_argument("--image-kib", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=240.0, help="bound on the whole run")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(f"{'phase':<10}{'n':>8}{'ops/s':>10}{'server CPU/op':>16}")
    for phase in ("enqueue", "drain", "pull"):
        r = out.get(phase)
        if r:
            cpu = f"{r['server_cpu_us']:>13.0f} us" if "server_cpu_us" in r else f"{'-':>16}"
            print(f"{phase:<10}{r['n']:>8}{r['per_s']:>10.0f}{cpu}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
