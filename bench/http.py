"""HTTP uplink benchmark: requests/s and server CPU per request, keep-alive, resolver cache warm.

    .venv/bin/python bench/http.py [--connections 16] [--requests 20000] [--seconds 20]

Three processes, all on loopback: a private redis-server, the broker
(`corem-ingress serve`, HTTP listener only) and a load generator (aiohttp client,
keep-alive connections, one API key so the resolver cache is warm after the warm-up).
Server CPU is read from /proc/<pid>/stat (utime + stime) of the broker and of
redis-server around the measured run. A baseline run against a bare aiohttp app that
answers 202 without doing anything shows the framework's own cost on this machine.
Bounded in requests and in time. Prints a table and a JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and "http.py" would shadow
# the standard library's http package (that aiohttp and urllib import): drop the folder.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procstat import cpu_seconds, pct

BODY = json.dumps({"kind": "telemetry", "payload": {"temp": 21.5, "rh": 40}}).encode()


# -- /proc --------------------------------------------------------------------------------------


# -- load generator (its own process) ------------------------------------------------------------
async def loadgen(
    url: str, key: str, connections: int, total: int, seconds: float
) -> dict[str, Any]:
    import aiohttp

    statuses: dict[int, int] = {}
    latencies: list[float] = []
    remaining = total
    deadline = time.monotonic() + seconds
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    done = len(latencies)
    return {
        "requests": done,
        "elapsed_s": elapsed,
        "rps": done / elapsed if elapsed else 0.0,
        "statuses": statuses,
        "p50_ms": pct(latencies, 50) * 1000 if latencies else 0.0,
        "p99_ms": pct(latencies, 99) * 1000 if latencies else 0.0,
    }


def run_loadgen(url: str, key: str, connections: int, total: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--loadgen",
            url,
            "--key",
            key,
            "--connections",
            str(connections),
            "--requests",
            str(total),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- baseline server (its own process) -----------------------------------------------------------
def baseline_server(port: int) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"message_id": "0" * 32, "received_at": 0.0}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/devices/{device_id}/uplink", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- orchestration ---------------------------------------------------------------------------------
def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def provision(redis_url: str) -> tuple[str, str]:
    from corem_ingress.app import redis_client
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry

    client = redis_client(redis_url)
    try:
        registry = Registry(
            client, KeySchema("corem"), keyring=None, api_key_overlap=60, api_key_overlap_max=60
        )
        res = await registry.provision("bench", "bench-hw-1", CredentialKind.API_KEY, actor="bench")
        assert res.api_key is not None
        return res.device.device_id, res.api_key.api_key
    finally:
        await client.aclose()


async def stream_length(redis_url: str) -> int:
    from corem_ingress.app import redis_client
    from corem_ingress.store.keys import KeySchema

    client = redis_client(redis_url)
    try:
        return int(await client.xlen(KeySchema("corem").uplink_stream("bench")))
    finally:
        await client.aclose()


def measure(
    name: str,
    url: str,
    key: str,
    pids: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    warm = run_loadgen(url, key, args.connections, args.warmup, 30)  # cache warm
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    result = run_loadgen(url, key, args.connections, args.requests, args.seconds)
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    n = max(1, result["requests"])
    result["name"] = name
    result["warmup_statuses"] = warm["statuses"]
    for proc_name in pids:
        used = after[proc_name] - before[proc_name]
        result[f"{proc_name}_cpu_s"] = used
        result[f"{proc_name}_cpu_us_per_req"] = used / n * 1e6
        result[f"{proc_name}_cores"] = used / result["elapsed_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiohttp run")
    args = parser.parse_args()
    if args.loadgen:
        res = asyncio.run(
            loadgen(args.loadgen, args.key, args.connections, args.requests, args.seconds)
        )
        print(json.dumps(res))
        return 0
    if args.baseline_server:
        baseline_server(args.baseline_server)
        return 0

    from corem_ingress.embedded_redis import EmbeddedRedis, free_port

    results = []
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        assert redis_server.pid is not None
        device_id, key = asyncio.run(provision(redis_server.url))
        http_port, health_port = free_port(), free_port()
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            json.dumps(  # JSON is YAML
                {
                    "node_id": "bench",
                    "state_dir": str(Path(tmp) / "state"),
                    "logging": {"format": "json", "level": "warning"},
                    "redis": {"url": redis_server.url},
                    "health": {"host": "127.0.0.1", "port": health_port},
                    "http": {"host": "127.0.0.1", "port": http_port, "admin_mode": "off"},
                    "mqtt": {"enabled": False},
                    "coap": {"enabled": False},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
        broker = subprocess.Popen(
            [sys.executable, "-m", "corem_ingress", "serve", "--config", str(cfg)],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{health_port}/healthz", broker)
            url = f"http://127.0.0.1:{http_port}/api/v1/devices/{device_id}/uplink"
            res = measure(
                "corem_ingress", url, key, {"broker": broker.pid, "redis": redis_server.pid}, args
            )
            stored = asyncio.run(stream_length(redis_server.url))
            res["stored_in_stream"] = stored
            results.append(res)
        finally:
            stop(broker)
        # Every request of both runs (warm-up included) must have been answered 202 and stored.
        answered = res["requests"] + args.warmup
        all_202 = res["statuses"] == {"202": res["requests"]}
        if not all_202 or res["warmup_statuses"] != {"202": args.warmup} or stored != answered:
            print(f"error: {stored} stored vs {res['statuses']} answered", file=sys.stderr)
            return 1

    if not args.no_baseline:
        port = free_port()
        base = subprocess.Popen(
            [sys.executable, __file__, "--baseline-server", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/api/v1/devices/x/uplink"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(
                        urllib.request.Request(url, data=BODY, method="POST"), timeout=1
                    ).read()
                    break
                except OSError:
                    time.sleep(0.05)
            results.append(measure("bare aiohttp (baseline)", url, key, {"broker": base.pid}, args))
        finally:
            stop(base)

    print(
        f"{'server':26} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server CPU us/req':>18} {'redis CPU us/req':>17} {'statuses':>16}"
    )
    for r in results:
        redis_us = f"{r['redis_cpu_us_per_req']:.0f}" if "redis_cpu_us_per_req" in r else "-"
        print(
            f"{r['name']:26} {r['rps']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{r['broker_cpu_us_per_req']:18.0f} {redis_us:>17} {json.dumps(r['statuses']):>16}"
        )
    print(
        json.dumps(
            {
                "bench": "http",
                "connections": args.connections,
                "cpus": os.cpu_count(),
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
