"""Resolver benchmark: cache hit, cache miss beside a raw GET, and revocation propagation.

    .venv/bin/python bench/resolver.py [--keys N] [--hits N] [--misses N] [--revocations N]

Starts its own redis-server on a free loopback port. Prints a table and a JSON line.
Targets (issue 2): hit p99 <= 20 us; miss p50 <= 1.2x raw GET p50; propagation p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from bench.procstat import pct
from corem_ingress import logs
from corem_ingress.app import redis_client
from corem_ingress.core import api_keys
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.core.resolver_cache import ResolverCache
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.resolver import Resolver
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry


async def provision(registry: Registry, n: int, prefix: str) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        r = await registry.provision(
            "bench", f"{prefix}-{i}", CredentialKind.API_KEY, actor="bench"
        )
        assert r.api_key is not None
        out.append((r.api_key.key_id, r.api_key.api_key))
    return out


async def bench_hits(resolver: Resolver, keys: list[tuple[str, str]], n: int) -> dict[str, float]:
    for _, raw in keys:
        await resolver.resolve_api_key(raw)
    samples: list[float] = []
    sync_samples: list[float] = []
    clock = time.perf_counter_ns
    m = len(keys)
    for i in range(n):
        raw = keys[i % m][1]
        t0 = clock()
        await resolver.resolve_api_key(raw)
        samples.append((clock() - t0) / 1000)
    # The synchronous path DTLS handshake callbacks use (no hashing: lookup by PSK identity).
    lookup = api_keys.hash_key(keys[0][1])
    for _ in range(n):
        t0 = clock()
        resolver.cache.get(CredentialKind.API_KEY, lookup, time.time())
        sync_samples.append((clock() - t0) / 1000)
    return {
        "hit_p50_us": pct(samples, 50),
        "hit_p99_us": pct(samples, 99),
        "sync_hit_p50_us": pct(sync_samples, 50),
        "sync_hit_p99_us": pct(sync_samples, 99),
    }


async def bench_misses(
    resolver: Resolver, redis_url: str, keys: list[tuple[str, str]], n: int, schema: KeySchema
) -> dict[str, float]:
    raw_client = redis_client(redis_url)
    miss: list[float] = []
    get: list[float] = []
    clock = time.perf_counter_ns
    m = len(keys)
    for i in range(n):
        raw = keys[i % m][1]
        resolver.drop_cache()
        t0 = clock()
        await resolver.resolve_api_key(raw)
        miss.append((clock() - t0) / 1000)
        key = schema.lookup(CredentialKind.API_KEY, api_keys.hash_key(raw))
        t0 = clock()
        await raw_client.get(key)
        get.append((clock() - t0) / 1000)
    await raw_client.aclose()
    return {
        "miss_p50_us": pct(miss, 50),
        "miss_p99_us": pct(miss, 99),
        "raw_get_p50_us": pct(get, 50),
        "raw_get_p99_us": pct(get, 99),
        "miss_over_get_p50": pct(miss, 50) / pct(get, 50),
    }


async def bench_propagation(
    registry: Registry, redis_url: str, n: int, processes: int
) -> dict[str, float]:
    creds = await provision(registry, n, "prop")
    specs = [f"api_key:{kid}:{api_keys.hash_key(raw)}" for kid, raw in creds]
    procs = []
    for _ in range(processes):
        args = [
            sys.executable,
            "-m",
            "corem_ingress.sim.revocation_probe",
            "--redis-url",
            redis_url,
            "--max-seconds",
            str(60 + n * 0.2),
        ]
        for s in specs:
            args += ["--watch", s]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    readers = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 60)
            assert json.loads(line)["ready"] is True

        received: dict[tuple[int, str], float] = {}

        async def read(idx: int, p: subprocess.Popen[str]) -> None:
            assert p.stdout is not None
            while len([k for k in received if k[0] == idx]) < n:
                line = await asyncio.to_thread(p.stdout.readline)
                if not line:
                    return
                data = json.loads(line)
                if "order" in data:
                    received[(idx, data["credential_id"])] = data["at"]

        readers = [asyncio.ensure_future(read(i, p)) for i, p in enumerate(procs)]
        started: dict[str, float] = {}
        returned: dict[str, float] = {}
        for kid, _ in creds:
            started[kid] = time.time()
            await registry.revoke_api_key("bench", kid, actor="bench")
            returned[kid] = time.time()
            await asyncio.sleep(0.005)  # paced: one revocation at a time, as an operator would
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        for r in readers:
            r.cancel()
    got = [(i, kid) for i in range(processes) for kid, _ in creds if (i, kid) in received]
    # From the revoke call's start (the conservative figure: the order usually lands in the
    # other processes before the call has even returned, because the call also re-reads the
    # record and writes the audit entry after the atomic revoke+publish).
    lat = [(received[k] - started[k[1]]) * 1000 for k in got]
    after_return = [(received[k] - returned[k[1]]) * 1000 for k in got]
    missing = processes * n - len(lat)
    return {
        "propagation_p50_ms": pct(lat, 50),
        "propagation_p99_ms": pct(lat, 99),
        "propagation_max_ms": max(lat),
        "after_return_p50_ms": pct(after_return, 50),
        "after_return_p99_ms": pct(after_return, 99),
        "revoke_call_p50_ms": pct([(returned[k] - started[k]) * 1000 for k in returned], 50),
        "propagation_samples": len(lat),
        "propagation_missing": missing,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--hits", type=int, default=200_000)
    ap.add_argument("--misses", type=int, default=5000)
    ap.add_argument("--revocations", type=int, default=200)
    ap.add_argument("--processes", type=int, default=3)
    args = ap.parse_args()
    logs.configure("json", "error")
    with EmbeddedRedis() as server:
        client = redis_client(server.url)
        schema = KeySchema()
        ring = KeyRing.parse(generate_kek_line("bench"))
        registry = Registry(
            client, schema, keyring=ring, api_key_overlap=60, api_key_overlap_max=600
        )
        resolver = Resolver(
            client,
            schema,
            ResolverCache(ttl=300, negative_ttl=2, max_entries=100_000),
            keyring=ring,
        )
        keys = await provision(registry, args.keys, "hit")
        results: dict[str, float] = {}
        results.update(await bench_hits(resolver, keys, args.hits))
        results.update(await bench_misses(resolver, server.url, keys, args.misses, schema))
        results.update(
            await bench_propagation(registry, server.url, args.revocations, args.processes)
        )
        await client.aclose()
    targets = {
        "hit_p99_us": ("<=", 20.0),
        "miss_over_get_p50": ("<=", 1.2),
        "propagation_p99_ms": ("<=", 50.0),
    }
    print(f"resolver benchmark ({os.cpu_count()} cores, redis-server on loopback)")
    for name, value in results.items():
        target = targets.get(name)
        mark = ""
        if target:
            mark = (
                f"  target {target[0]} {target[1]:g}: {'MET' if value <= target[1] else 'MISSED'}"
            )
        print(f"  {name:<24} {value:10.2f}{mark}")
    print(json.dumps({"bench": "resolver", **{k: round(v, 3) for k, v in results.items()}}))


if __name__ == "__main__":
    asyncio.run(main())
