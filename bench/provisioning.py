"""Provisioning benchmark: claim enrolments over HTTP, and JITP decisions, per second.

    .venv/bin/python bench/provisioning.py [--devices 1000] [--concurrency 32] [--seconds 60]

In one process, on loopback: a private redis-server, a broker node (HTTP listener only)
and an aiohttp client that enrols ``--devices`` distinct hardware_ids with one claim
(each a full enrolment: claim lookup, rate windows, decision reads, the ``claim_issue``
Lua step, audit record). Then the same number of unregistered certificates go through
``Registry.jit_provision`` (issuer index, path validation, the provision Lua step).
Bounded in count and in time. Prints a table and a JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and bench/http.py would shadow
# the standard library's http package: drop the folder (as bench/http.py does).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import asyncio
import json
import statistics
import time
from typing import Any


async def run(devices: int, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp
    from cryptography.hazmat.primitives.serialization import Encoding

    from corem_ingress import devcerts
    from corem_ingress.adapters import http
    from corem_ingress.app import Node
    from corem_ingress.config import Config
    from corem_ingress.core.claims import ClaimKind
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.core.jitp import JitpTemplate
    from corem_ingress.core.psk import generate_kek_line
    from corem_ingress.embedded_redis import EmbeddedRedis

    os.environ.setdefault("COREM_PSK_KEK", generate_kek_line("bench"))
    redis = EmbeddedRedis().start()
    cfg = Config()
    cfg.redis.url = redis.url
    cfg.health.port = cfg.http.port = 0
    cfg.mqtt.enabled = cfg.coap.enabled = False
    cfg.logging.level = "warning"
    cfg.provisioning.claim_rate_per_minute = cfg.provisioning.tenant_rate_per_minute = 0
    node = Node(cfg, listener_factories=[http.build])
    await node.start()
    try:
        registry = node.services.registry
        claim = await registry.create_claim(
            "bench", ClaimKind.API_KEY, CredentialKind.API_KEY, max_uses=devices,
            expires_at=None, actor="bench",
        )  # fmt: skip
        url = f"http://127.0.0.1:{node.listeners[0].port}/api/v1/provisioning/claim"
        headers = {"Authorization": f"Bearer {claim.claim_key}"}
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        todo = iter(range(devices))
        deadline = time.monotonic() + seconds

        async def worker(session: aiohttp.ClientSession) -> None:
            for i in todo:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                async with session.post(url, headers=headers, json={"hardware_id": f"hw-{i}"}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        claims_s = time.perf_counter() - t0

        ca = devcerts.make_ca("bench CA")
        record, _ = await registry.add_ca("bench", ca.cert_pem, actor="bench")
        await registry.set_auto_provision(
            "bench", record.info.fingerprint, JitpTemplate(), actor="bench"
        )
        ders = [
            devcerts.issue(ca, f"jitp-{i}").cert.public_bytes(Encoding.DER)
            for i in range(min(devices, 500))
        ]
        gate = asyncio.Semaphore(concurrency)

        async def jit(der: bytes) -> bool:
            async with gate:
                return await registry.jit_provision(der, True)

        t1 = time.perf_counter()
        done = await asyncio.gather(*(jit(d) for d in ders))
        jitp_s = time.perf_counter() - t1
    finally:
        await node.stop()
        redis.close()
    lat = sorted(latencies)
    return {
        "claim_enrolments": len(latencies),
        "claim_statuses": statuses,
        "claim_enrolments_per_s": round(len(latencies) / claims_s, 1),
        "claim_p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "claim_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2) if lat else None,
        "jitp_provisioned": sum(done),
        "jitp_per_s": round(len(ders) / jitp_s, 1),
        "concurrency": concurrency,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args()
    result = asyncio.run(run(a.devices, a.concurrency, a.seconds))
    for k, v in result.items():
        print(f"{k:24} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
