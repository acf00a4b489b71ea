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

from bench import harness
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
def baseline_server(port: int, loop_name: str = "asyncio") -> None:
    """``loop_name``: ``asyncio`` (``web.run_app``'s default: the peer of every published
    figure) or ``uvloop`` (the loop our broker runs on: ``--uvloop-baseline``)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"message_id": "0" * 32, "received_at": 0.0}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/devices/{device_id}/uplink", handler)
    loop = None
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


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


def resolver_cache_counts(health_port: int) -> dict[str, float]:
    """Our broker's resolver cache hits and misses so far (its /metrics): every measured
    request must be a hit (the key was resolved once, in the warm-up)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5).read()
    counts = {}
    for line in text.decode().splitlines():
        name, _, value = line.partition(" ")
        name = name.removesuffix("_total")  # a counter's sample name
        if name in ("corem_resolver_cache_hits", "corem_resolver_cache_misses"):
            counts[name.removeprefix("corem_resolver_")] = float(value)
    return counts


def measure(
    name: str,
    url: str,
    key: str,
    pids: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    warm = run_loadgen(url, key, args.connections, args.warmup, 30)  # cache warm
    health = pids.get("health_port")
    cache0 = resolver_cache_counts(health) if health else {}
    pids = {n: p for n, p in pids.items() if n != "health_port"}
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    result = run_loadgen(url, key, args.connections, args.requests, args.seconds)
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    if health:
        cache1 = resolver_cache_counts(health)
        for k in cache1:  # during the measured requests
            result[k] = cache1[k] - cache0.get(k, 0.0)
    n = max(1, result["requests"])
    result["name"] = name
    result["warmup_statuses"] = warm["statuses"]
    for proc_name in pids:
        used = after[proc_name] - before[proc_name]
        result[f"{proc_name}_cpu_s"] = used
        result[f"{proc_name}_cpu_us_per_req"] = used / n * 1e6
        result[f"{proc_name}_cores"] = used / result["elapsed_s"]
    return result


#: The bare aiohttp app on uvloop (``--uvloop-baseline``): the same loop as our broker's.
UVLOOP_PEER = "bare aiohttp [uvloop]"

QUICK = {"requests": 3_000, "warmup": 300}


def start_ours(
    redis_url: str, tmp: Path, loop: str, tag: str, src: Path | None = None
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Our broker (HTTP listener only) pinned to the server core; (process, http, health).
    ``src``: an exported older tree (``--before``) instead of this one."""
    from corem_ingress.embedded_redis import free_port

    http_port, health_port = free_port(), free_port()
    cfg = tmp / f"bench-{tag}.yaml"
    doc: dict[str, Any] = {
        "node_id": f"bench-{tag}",
        "state_dir": str(tmp / f"state-{tag}"),
        "logging": {"format": "json", "level": "warning"},
        "redis": {"url": redis_url},
        "health": {"host": "127.0.0.1", "port": health_port},
        "http": {"host": "127.0.0.1", "port": http_port, "admin_mode": "off"},
        "mqtt": {"enabled": False},
        "coap": {"enabled": False},
    }
    if loop:
        doc["event_loop"] = loop
    cfg.write_text(json.dumps(doc))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    broker = subprocess.Popen(
        harness.pinned([sys.executable, "-m", "corem_ingress", "serve", "--config", str(cfg)]),
        env=env,
        cwd=src or tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{health_port}/healthz", broker)
    return broker, http_port, health_port


def start_baseline(loop_name: str = "asyncio") -> tuple[subprocess.Popen[bytes], str]:
    from corem_ingress.embedded_redis import free_port

    port = free_port()
    base = subprocess.Popen(
        harness.pinned(
            [sys.executable, __file__, "--baseline-server", str(port), "--baseline-loop", loop_name]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    return base, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument(
        "--loops", default="", help="run our broker once per event loop named (asyncio,uvloop)"
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy profile of our broker")
    parser.add_argument("--before", metavar="REV", help="also run our broker of git revision REV")
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiohttp run")
    parser.add_argument(
        "--uvloop-baseline",
        action="store_true",
        help="also run the bare aiohttp app on uvloop (our broker's loop), as a second peer",
    )
    parser.add_argument("--baseline-loop", default="asyncio", help=argparse.SUPPRESS)
    harness.add_run_args(parser)
    args = parser.parse_args()
    if args.loadgen:
        res = asyncio.run(
            loadgen(args.loadgen, args.key, args.connections, args.requests, args.seconds)
        )
        print(json.dumps(res))
        return 0
    if args.baseline_server:
        baseline_server(args.baseline_server, args.baseline_loop)
        return 0
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, v)
    if not harness.can_pin():
        print("warning: taskset or a second CPU missing: nothing is pinned", file=sys.stderr)
    env_info = harness.environment()
    harness.pin_self(harness.LOADGEN_CPU)  # the load generator and Redis: the other core

    from corem_ingress.embedded_redis import EmbeddedRedis

    loops = [x for x in args.loops.split(",") if x] or [""]
    runs: list[dict[str, dict[str, float]]] = []
    details: list[dict[str, Any]] = []
    failures: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        assert redis_server.pid is not None
        device_id, key = asyncio.run(provision(redis_server.url))
        sides: list[tuple[str, str, dict[str, int]]] = []
        try:
            if args.before:
                src = harness.export_rev(args.before, Path(tmp) / "before-src")
                broker, http_port, health = start_ours(
                    redis_server.url, Path(tmp), "", "before", src
                )
                procs.append(broker)
                url = f"http://127.0.0.1:{http_port}/api/v1/devices/{device_id}/uplink"
                name = f"corem_ingress@{args.before}"
                pids = {"broker": broker.pid, "redis": redis_server.pid, "health_port": health}
                sides.append((name, url, pids))
            for loop in loops:
                broker, http_port, health = start_ours(
                    redis_server.url, Path(tmp), loop, loop or "x"
                )
                procs.append(broker)
                url = f"http://127.0.0.1:{http_port}/api/v1/devices/{device_id}/uplink"
                name = f"corem_ingress[{loop}]" if loop else "corem_ingress"
                pids = {"broker": broker.pid, "redis": redis_server.pid, "health_port": health}
                sides.append((name, url, pids))
            if not args.no_baseline:
                base, base_url = start_baseline()
                procs.append(base)
                sides.append(("bare aiohttp (baseline)", base_url, {"broker": base.pid}))
            if args.uvloop_baseline:
                base, base_url = start_baseline("uvloop")
                procs.append(base)
                sides.append((UVLOOP_PEER, base_url, {"broker": base.pid}))
            for i in range(args.runs):
                run: dict[str, dict[str, float]] = {}
                for name, url, pids in sides:  # ours and the peer, one after the other
                    stored0 = asyncio.run(stream_length(redis_server.url))
                    res = measure(name, url, key, pids, args)
                    if name.startswith("corem_ingress"):
                        stored = asyncio.run(stream_length(redis_server.url)) - stored0
                        res["stored_in_stream"] = stored
                        answered = res["requests"] + args.warmup
                        all_202 = res["statuses"] == {"202": res["requests"]}
                        if (
                            not all_202
                            or res["warmup_statuses"] != {"202": args.warmup}
                            or stored != answered
                        ):
                            failures.append(f"{name}: {stored} stored vs {res['statuses']}")
                    run[name] = {
                        k: float(v)
                        for k, v in res.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    }
                    details.append(res)
                runs.append(run)
                print(f"run {i + 1}/{args.runs}: {json.dumps(run)}", file=sys.stderr)
            if args.profile:
                from bench import pyspy

                for name, url, pids in sides:
                    if name.startswith("corem_ingress"):
                        tag = name.replace("corem_ingress", "http")
                        tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)
                        tag = tag.strip("_")
                        with pyspy.recording(pids["broker"], Path(args.profile) / tag):
                            run_loadgen(url, key, args.connections, args.requests, args.seconds)
        finally:
            for proc in procs:
                stop(proc)
    if failures:
        print("error: " + "; ".join(failures), file=sys.stderr)
        return 1
    report(runs, details, env_info, args)
    return 0


def report(
    runs: list[dict[str, dict[str, float]]],
    details: list[dict[str, Any]],
    env_info: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    names = list(runs[0])
    peer = "bare aiohttp (baseline)"
    ours = [n for n in names if n.startswith("corem_ingress")]
    ratios = {
        f"{n}:broker_cpu_us_per_req": ("broker_cpu_us_per_req", n, peer)
        for n in ours
        if peer in names
    }
    if UVLOOP_PEER in names:
        ratios.update(
            {
                f"{n}:broker_cpu_us_per_req vs uvloop": ("broker_cpu_us_per_req", n, UVLOOP_PEER)
                for n in ours
            }
        )
    summary = harness.summarize_runs(runs, ratios)
    print(f"{len(runs)} runs; median (min-max); load average at start {env_info['load_average']}")
    print(f"{'server':26} {'req/s':>22} {'server CPU us/req':>22} {'redis CPU us/req':>22}")
    for n in names:
        s = summary[n]
        print(
            f"{n:26} {harness.fmt_spread(s.get('rps'), 0):>22} "
            f"{harness.fmt_spread(s.get('broker_cpu_us_per_req')):>22} "
            f"{harness.fmt_spread(s.get('redis_cpu_us_per_req')):>22}"
        )
    for n in names:
        s = summary[n]
        if "cache_hits" in s:
            hits = harness.fmt_spread(s["cache_hits"], 0)
            misses = harness.fmt_spread(s.get("cache_misses"), 0)
            print(f"{n}: resolver cache per measured run: hits {hits}, misses {misses}")
    for name, s in summary.get("ratios", {}).items():
        print(f"ratio {name}: {harness.fmt_spread(s, 2)}x bare aiohttp")
    # The last run's full records (statuses...) with each figure replaced by its median.
    results = []
    for n in names:
        last = next(d for d in reversed(details) if d["name"] == n)
        results.append({**last, **{k: v["median"] for k, v in summary[n].items()}})
    print(
        json.dumps(
            {
                "bench": "http",
                "connections": args.connections,
                "cpus": os.cpu_count(),
                "runs": len(runs),
                "quick": args.quick,
                "env": env_info,
                "summary": summary,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
