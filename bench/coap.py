"""CoAP/DTLS benchmark: our listener beside libcoap's coap-server-openssl, in one run.

    .venv/bin/python bench/coap.py [--handshakes N] [--requests N] [--idle N] [--seconds S]

Loopback only. Each server runs pinned to CPU 0 (taskset), the single load generator
(this process, an in-process pyOpenSSL DTLS client) pinned to CPU 1; the private
redis-server for our node is pinned to CPU 1 too. Server CPU is read from
/proc/PID/stat (utime+stime) around each phase, memory from VmRSS. Measured:

* PSK handshakes/s (sequential, handshake + close_notify) and server CPU per handshake;
* ECDHE-ECDSA (client certificate) handshakes, same figures;
* server CPU per request on one session, 1 and 16 outstanding CON GETs
  (ours: ``GET /down``; libcoap: ``GET /`` -- neither touches Redis), plus ours for
  ``POST /up/telemetry`` (includes the Redis XADD);
* memory per idle session (N sessions opened, RSS delta / N).

Targets (issue 5): PSK handshake CPU <= 2x libcoap, request CPU <= 3x libcoap,
<= 10 KB per idle session. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds http.py and mqtt.py: never let them shadow the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from aiocoap import CON, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from OpenSSL import SSL  # noqa: E402

from bench.procstat import cpu_seconds, rss_bytes  # noqa: E402
from corem_ingress import devcerts  # noqa: E402
from corem_ingress.app import redis_client  # noqa: E402
from corem_ingress.core.identity import CredentialKind  # noqa: E402
from corem_ingress.core.psk import KeyRing, generate_kek_line  # noqa: E402
from corem_ingress.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from corem_ingress.sim.dtls_client import Client, cert_context, psk_context  # noqa: E402
from corem_ingress.store.keys import KeySchema  # noqa: E402
from corem_ingress.store.registry import Registry  # noqa: E402

HOST = "127.0.0.1"
PSK_ID = "bench:device"  # assigned identities carry the tenant prefix
PSK = b"bench-psk-0123456789-0123456789-abcdef"


class Session:
    """A blocking DTLS session over a connected UDP socket, with retransmission."""

    def __init__(self, ctx: SSL.Context, port: int, *, deadline: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((HOST, port))
        self.c = Client(ctx)
        for d in self.c.start():
            self.sock.send(d)
        end = time.monotonic() + deadline
        while not self.c.done:
            if self.c.failed is not None or time.monotonic() > end:
                self.sock.close()
                raise RuntimeError(f"handshake failed: {self.c.failed}")
            self._pump(0.5)

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            self.c.conn.DTLSv1_handle_timeout()
        else:
            self.c.receive(data)
        for d in self.c.outgoing():
            self.sock.send(d)

    def send(self, data: bytes) -> None:
        for d in self.c.send(data):
            self.sock.send(d)

    def recv(self, timeout: float = 5.0) -> bytes:
        end = time.monotonic() + timeout
        while not self.c.received:
            if time.monotonic() > end or self.c.failed is not None:
                raise TimeoutError("no response")
            self._pump(0.5)
        return self.c.received.pop(0)

    def close(self) -> None:
        for d in self.c.close():
            self.sock.send(d)
        self.sock.close()


def request_bytes(mid: int, code: Code, path: tuple[str, ...], payload: bytes = b"") -> bytes:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = CON, mid & 0xFFFF, mid.to_bytes(4, "big")
    m.opt.uri_path = path
    return bytes(m.encode())


@dataclass
class Target:
    name: str
    pid: int
    port: int
    request: tuple[Code, tuple[str, ...], bytes]


def handshakes(target: Target, ctx: SSL.Context, n: int, seconds: float) -> dict[str, float]:
    Session(ctx, target.port).close()  # warm up (and fill the resolver cache)
    done = 0
    cpu0, t0 = cpu_seconds(target.pid), time.perf_counter()
    while done < n and time.perf_counter() - t0 < seconds:
        Session(ctx, target.port).close()
        done += 1
    wall, cpu = time.perf_counter() - t0, cpu_seconds(target.pid) - cpu0
    return {"n": done, "per_s": done / wall, "server_cpu_us": cpu / done * 1e6}


def requests(
    target: Target,
    ctx: SSL.Context,
    n: int,
    window: int,
    seconds: float,
    request: tuple[Code, tuple[str, ...], bytes] | None = None,
) -> dict[str, float]:
    code, path, payload = request or target.request
    s = Session(ctx, target.port)
    mid = 1
    for _ in range(20):  # warm up
        s.send(request_bytes(mid, code, path, payload))
        s.recv()
        mid += 1
    sent = received = 0
    cpu0, t0 = cpu_seconds(target.pid), time.perf_counter()
    while received < n and time.perf_counter() - t0 < seconds:
        while sent - received < window and sent < n:
            s.send(request_bytes(mid, code, path, payload))
            mid += 1
            sent += 1
        s.recv()
        received += 1
    wall, cpu = time.perf_counter() - t0, cpu_seconds(target.pid) - cpu0
    s.close()
    return {"n": received, "per_s": received / wall, "server_cpu_us": cpu / received * 1e6}


def idle_memory(target: Target, ctx: SSL.Context, n: int) -> dict[str, float]:
    time.sleep(0.5)
    base = rss_bytes(target.pid)
    sessions = [Session(ctx, target.port) for _ in range(n)]
    time.sleep(0.5)
    grown = rss_bytes(target.pid) - base
    for s in sessions:
        s.close()
    return {"n": n, "bytes_per_session": grown / n}


def start_pinned(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", "0", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(port: int, ctx: SSL.Context, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            Session(ctx, port, deadline=1.0).close()
            return
        except (RuntimeError, OSError, SSL.Error):
            time.sleep(0.2)
    raise RuntimeError("server did not come up")


def coap_broker_env(tmp: Path, redis_url: str, kek: str, port: int) -> dict[str, str]:
    """Environment of a CoAP/DTLS-only broker for a benchmark: ``tmp`` holds the dev PKI
    (server.pem/.key, ca.pem) and the state dir; no handshake rate limit, warnings only."""
    return {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": kek,
        "COREM_HTTP_ENABLED": "0",
        "COREM_MQTT_ENABLED": "0",
        "COREM_HEALTH_PORT": "0",
        "COREM_COAP_HOST": HOST,
        "COREM_COAP_PORT": str(port),
        "COREM_COAP_SERVER_CERT": str(tmp / "server.pem"),
        "COREM_COAP_SERVER_KEY": str(tmp / "server.key"),
        "COREM_COAP_CLIENT_CA_FILES": str(tmp / "ca.pem"),
        "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
        "COREM_LOGGING_LEVEL": "warning",
        "COREM_STATE_DIR": str(tmp / "state"),
    }


async def provision(url: str, kek: str, device_pem: bytes, ca_pem: bytes) -> None:
    r = redis_client(url)
    reg = Registry(
        r,
        KeySchema("corem"),
        keyring=KeyRing.parse(kek),
        api_key_overlap=60,
        api_key_overlap_max=60,
    )
    await reg.provision(
        "bench", "hw-psk", CredentialKind.PSK, actor="bench", psk_identity=PSK_ID, psk_bytes=PSK
    )
    await reg.add_ca("bench", ca_pem, actor="bench")  # the tenant's trust anchor
    await reg.provision("bench", "hw-x509", CredentialKind.X509, actor="bench", cert_pem=device_pem)
    await r.aclose()


class _Done(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--handshakes", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0, help="cap per phase")
    ap.add_argument("--profile", action="store_true", help="cProfile our server process")
    ap.add_argument("--phases", default="", help="comma-separated subset of the phases")
    a = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs")
    for tool in ("taskset", "coap-server-openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-coap-"))
    ca = devcerts.make_ca("bench CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp / "server.pem", tmp / "server.key")
    dev = devcerts.issue(ca, "bench-dev")
    dev.write(tmp / "dev.pem", tmp / "dev.key")
    psk_ctx = psk_context(PSK_ID.encode(), PSK)
    ecdsa_ctx = cert_context(str(tmp / "dev.pem"), str(tmp / "dev.key"), str(tmp / "ca.pem"))

    redis = EmbeddedRedis().start()
    subprocess.run(["taskset", "-cp", "1", str(redis.pid)], check=False, capture_output=True)
    kek = generate_kek_line("bench")
    asyncio.run(provision(redis.url, kek, dev.cert_pem, ca.cert_pem))
    ours_port = free_port()
    env = coap_broker_env(tmp, redis.url, kek, ours_port)
    prof = tmp / "ours.prof"
    cmd = [sys.executable, "-m", "corem_ingress", "serve"]
    if a.profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "corem_ingress", "serve"]
    ours_proc = start_pinned(cmd, env)
    lib_base = free_port()
    lib_proc = start_pinned(
        [
            shutil.which("coap-server-openssl") or "",
            "-A",
            HOST,
            "-p",
            str(lib_base),
            "-k",
            PSK.decode(),
            "-c",
            str(tmp / "server.pem"),
            "-j",
            str(tmp / "server.key"),
            "-C",
            str(tmp / "ca.pem"),
            "-v",
            "0",
        ]
    )
    results: dict[str, dict[str, Any]] = {}
    try:
        targets = [
            Target("corem", ours_proc.pid, ours_port, (Code.GET, ("down",), b"")),
            Target("libcoap", lib_proc.pid, lib_base + 1, (Code.GET, (), b"")),
        ]
        for t in targets:
            wait_ready(t.port, psk_ctx, ours_proc if t.name == "corem" else lib_proc)
        phases: list[tuple[str, Callable[[Target], dict[str, float]]]] = [
            ("psk_handshake", lambda t: handshakes(t, psk_ctx, a.handshakes, a.seconds)),
            ("ecdsa_handshake", lambda t: handshakes(t, ecdsa_ctx, a.handshakes // 2, a.seconds)),
            ("request_1", lambda t: requests(t, psk_ctx, a.requests, 1, a.seconds)),
            ("request_16", lambda t: requests(t, psk_ctx, a.requests, 16, a.seconds)),
            ("idle_memory", lambda t: idle_memory(t, psk_ctx, a.idle)),
        ]
        wanted = set(filter(None, a.phases.split(",")))
        for phase, fn in phases:
            if wanted and phase not in wanted:
                continue
            for t in targets:
                results.setdefault(phase, {})[t.name] = fn(t)
        if wanted and "uplink_post_1" not in wanted:
            raise _Done
        results["uplink_post_1"] = {
            "corem": requests(
                targets[0],
                psk_ctx,
                a.requests // 2,
                1,
                a.seconds,
                (Code.POST, ("up", "telemetry"), b'{"t":21.5}'),
            )
        }
    except _Done:
        pass
    finally:
        for proc in (ours_proc, lib_proc):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT if proc is ours_proc else signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        redis.close()
    print(
        f"{'phase':<16}{'server':<9}{'n':>7}{'ops/s':>10}{'server CPU/op':>16}{'bytes/session':>15}"
    )
    for phase, by in results.items():
        for name, r in by.items():
            cpu = f"{r['server_cpu_us']:.0f} us" if "server_cpu_us" in r else ""
            mem = f"{r['bytes_per_session']:.0f}" if "bytes_per_session" in r else ""
            ops = f"{r['per_s']:.0f}" if "per_s" in r else ""
            print(f"{phase:<16}{name:<9}{r['n']:>7.0f}{ops:>10}{cpu:>16}{mem:>15}")

    def ratio(phase: str) -> float:
        by = results.get(phase, {})
        if "corem" not in by or "libcoap" not in by:
            return float("nan")
        return float(by["corem"]["server_cpu_us"] / by["libcoap"]["server_cpu_us"])

    ratios = {p: ratio(p) for p in ("psk_handshake", "ecdsa_handshake", "request_1", "request_16")}
    for k, v in ratios.items():
        print(f"{k} CPU x libcoap: {v:.2f}")
    if a.profile:
        print(f"profile: {prof} (python -m pstats)")
    print(json.dumps({"results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
