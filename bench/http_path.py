"""Our Python work per HTTP uplink, in process: the app's handling of a request without
aiohttp's socket, parser and writer (what ``bench/http.py`` measures whole, with a CPU figure
that moves with the machine's load: batching changes with the throughput).

    .venv/bin/python -m bench.http_path [--requests 20000] [--concurrency 16] [--runs 5]
        [--before REV]

A real node in process (its HTTP listener started, not used) on a private redis-server;
each request is an aiohttp ``Request`` (one parsed message, reused; a fresh payload stream
with the body) handed to ``Application._handle``: routing, the middleware, the handler,
the append through the real batcher and Redis. ``concurrency`` requests run
at a time, as 16 keep-alive connections would. CPU = this process's CPU time (Redis's is
not in it) per request. ``--before REV`` runs REV's tree (``git archive``) in alternation
with this one, in fresh processes, ``--runs`` times each: median (min-max) and the ratio
per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = json.dumps({"kind": "telemetry", "payload": {"temp": 21.5, "rh": 40}}).encode()


async def measure(
    redis_url: str, requests: int, concurrency: int, stub_append: bool
) -> dict[str, float]:
    from aiohttp import streams
    from aiohttp.http import HttpVersion11
    from aiohttp.http_parser import RawRequestMessage
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    from corem_ingress.adapters import http
    from corem_ingress.app import Node
    from corem_ingress.config import Config
    from corem_ingress.core.identity import CredentialKind

    cfg = Config()
    cfg.redis.url = redis_url
    cfg.health.port = 0
    cfg.http.port = 0
    cfg.http.admin_mode = "off"
    cfg.mqtt.enabled = False
    cfg.coap.enabled = False
    cfg.logging.level = "warning"
    cfg.node_id = f"path-{os.getpid()}"
    cfg.validate()
    node = Node(cfg, listener_factories=[http.build])
    await node.start()
    try:
        res = await node.services.registry.provision(
            "bench", f"hw-{os.getpid()}", CredentialKind.API_KEY, actor="bench"
        )
        assert res.api_key is not None
        key, device = res.api_key.api_key, res.device.device_id
        app = node.listeners[0].apps[0].app
        if stub_append:  # the batcher answers at once: only our Python work is measured
            for resource in app.router.resources():
                for route in resource:
                    owner = getattr(route.handler, "__self__", None)
                    if hasattr(owner, "appender"):
                        owner.appender._batcher = _Stored()
        path = f"/api/v1/devices/{device}/uplink"
        headers = {
            "Host": "127.0.0.1",
            "X-API-Key": key,
            "Content-Type": "application/json",
            "Content-Length": str(len(BODY)),
        }
        protocol = _Protocol()
        loop = asyncio.get_running_loop()
        # One parsed request message, reused (aiohttp's parser would build this per request).
        message = RawRequestMessage(
            "POST",
            path,
            HttpVersion11,
            CIMultiDictProxy(CIMultiDict(headers)),
            tuple((k.encode(), v.encode()) for k, v in headers.items()),
            False,
            None,
            False,
            False,
            URL(path),
        )

        async def one() -> int:
            payload = streams.StreamReader(protocol, 2**16, loop=loop)  # type: ignore[arg-type]
            payload.feed_data(BODY)
            payload.feed_eof()
            task = asyncio.current_task()
            request = app._make_request(message, payload, protocol, None, task)  # type: ignore[arg-type]
            response = await app._handle(request)
            return response.status

        async def batch(n: int) -> list[int]:
            return list(await asyncio.gather(*(one() for _ in range(n))))

        for _ in range(1_000 // concurrency):  # warm: the key in the resolver cache
            await batch(concurrency)
        statuses: dict[int, int] = {}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = 0
        while done < requests:
            for status in await batch(concurrency):
                statuses[status] = statuses.get(status, 0) + 1
            done += concurrency
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if statuses != {202: done}:
            raise SystemExit(f"not every request got 202: {statuses}")
        return {"cpu_us_per_req": cpu / done * 1e6, "wall_us_per_req": wall / done * 1e6}
    finally:
        await node.stop()


class _Stored:
    """A batcher whose every append is stored at once (``--stub-append``)."""

    def submit(self, _uplink: object, done: Any) -> None:
        asyncio.get_running_loop().call_soon(done, None)


class _Protocol:
    """What a request and its payload stream ask of the connection's handler."""

    _reading_paused = False
    ssl_context = None
    peername = ("127.0.0.1", 50000)
    sockname = ("127.0.0.1", 8080)

    def pause_reading(self, **_kw: object) -> None:
        pass

    def resume_reading(self, **_kw: object) -> None:
        pass


def run_one(redis_url: str, args: argparse.Namespace, src: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, "-m", "bench.http_path", "--child", redis_url]
    cmd += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    if args.stub_append:
        cmd.append("--stub-append")
    out = subprocess.run(
        cmd,
        env=env,
        cwd=str(Path(__file__).resolve().parent.parent),
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", metavar="REV")
    parser.add_argument(
        "--stub-append",
        action="store_true",
        help="no Redis append (the batcher answers at once): our Python work alone",
    )
    parser.add_argument("--child", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        print(
            json.dumps(
                uvloop.run(measure(args.child, args.requests, args.concurrency, args.stub_append))
            )
        )
        return 0
    from bench import harness
    from corem_ingress.embedded_redis import EmbeddedRedis

    env_info = harness.environment()
    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        if harness.can_pin():  # after Redis started: it stays on every core
            harness.pin_self(harness.SERVER_CPU)  # the runs (children) on the server's core
        src = harness.export_rev(args.before, Path(tmp) / "before") if args.before else None
        sides: dict[str, list[float]] = {}
        ratios: list[float] = []
        for i in range(args.runs):
            after = run_one(redis_server.url, args, None)["cpu_us_per_req"]
            sides.setdefault("this tree", []).append(after)
            line: dict[str, Any] = {"this tree": round(after, 2)}
            if src is not None:
                before = run_one(redis_server.url, args, src)["cpu_us_per_req"]
                sides.setdefault(f"@{args.before}", []).append(before)
                ratios.append(after / before)
                line[f"@{args.before}"] = round(before, 2)
            print(f"run {i + 1}/{args.runs}: {json.dumps(line)}", file=sys.stderr)
    print(f"{args.runs} runs; load average at start {env_info['load_average']}")
    for name, values in sides.items():
        print(
            f"{name:20} CPU per request {statistics.median(values):7.2f} us "
            f"({min(values):.2f}-{max(values):.2f})"
        )
    if ratios:
        print(
            f"this tree / before, per run: {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
