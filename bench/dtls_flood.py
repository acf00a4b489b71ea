"""DTLS handshake flood: what half-done handshakes cost the CoAP listener (issue 11.2).

    .venv/bin/python -m bench.dtls_flood [--levels 0,1000,5000] [--garbage 2000]
        [--before REV] [--seconds S]

A half-done handshake is a ClientHello with a valid cookie followed by silence: the
broker holds an SSL object for it (and retransmits its flight) until
``coap.handshake_timeout_s``. For each level N of such pending handshakes (opened from
250 loopback source addresses, 127.0.0.2-251, so that per-source limits are not what is
measured; the broker runs with the pending caps raised above N), it measures on the
broker process (pinned to CPU 0; this load generator on CPU 1):

* **CPU per garbage datagram**: datagrams from an address with no DTLS state, sent in
  batches of 100, each batch followed by a cookie-less ClientHello whose
  HelloVerifyRequest proves the batch was processed (so none is lost in a socket buffer);
  the CPU the broker spends meanwhile on its own timers (retransmitting the pending
  flights) is measured over an idle window of the same length just before and
  subtracted;
* **a real device's handshake + POST latency**: a PSK handshake, a CON POST
  /up/telemetry (appended to Redis) until its 2.04, sequential, from 127.0.0.1;
* **memory per pending handshake**: the broker's RSS growth from level 0, divided by N.

``--before REV`` runs the same measurement first against the broker of git revision REV
(exported with ``git archive`` into a temporary folder, the working tree is not touched),
then against this checkout: a before/after in one run. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds http.py and mqtt.py: never let them shadow the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from aiocoap.numbers.codes import Code  # noqa: E402

from bench.coap import (  # noqa: E402
    PSK,
    PSK_ID,
    Session,
    coap_broker_env,
    provision,
    request_bytes,
)
from bench.procstat import cpu_seconds, pct, rss_bytes  # noqa: E402
from corem_ingress import devcerts  # noqa: E402
from corem_ingress.core.psk import generate_kek_line  # noqa: E402
from corem_ingress.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from corem_ingress.sim.dtls_client import Client, psk_context  # noqa: E402

HOST = "127.0.0.1"
#: Source addresses of the half-done handshakes (the whole 127/8 is loopback on Linux).
FLOOD_SOURCES = [f"127.0.0.{i}" for i in range(2, 252)]
GARBAGE_SOURCE = "127.0.1.1"
BATCH = 100
#: The garbage: an application-data record header and random bytes, from an unknown address.
GARBAGE = b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + (48).to_bytes(2, "big") + os.urandom(48)


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_broker(src: Path, tmp: Path, redis_url: str, kek: str, pending_cap: int) -> Broker:
    port = free_port()
    env = {
        **coap_broker_env(tmp, redis_url, kek, port),
        "PYTHONPATH": str(src),
        # Pending handshakes live through the whole measurement.
        "COREM_COAP_HANDSHAKE_TIMEOUT_S": "900",
        # Raised above the largest level: the cost of many pending handshakes is measured,
        # not the caps (a broker before the caps existed ignores these variables).
        "COREM_COAP_MAX_PENDING_HANDSHAKES": str(pending_cap),
        "COREM_COAP_MAX_PENDING_HANDSHAKES_PER_SOURCE": str(pending_cap),
    }
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "corem_ingress", "serve"],
        cwd=src,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ctx = psk_context(PSK_ID.encode(), PSK)
    for _ in range(150):
        if proc.poll() is not None:
            raise RuntimeError(f"broker from {src} exited with {proc.returncode}")
        try:
            Session(ctx, port, deadline=1.0).close()
            return Broker(proc, port)
        except (RuntimeError, OSError):
            time.sleep(0.2)
    raise RuntimeError("broker did not come up")


def _exchange(socks: dict[socket.socket, list[bytes]], deadline: float) -> list[socket.socket]:
    """Send each socket's datagrams, resend them every second until the socket has an
    answer (as a DTLS client would), until ``deadline``; the sockets that got one."""
    sel = selectors.DefaultSelector()  # epoll: thousands of sockets
    for s, out in socks.items():
        for d in out:
            s.send(d)
        sel.register(s, selectors.EVENT_READ)
    answered: list[socket.socket] = []
    resend_at = time.monotonic() + 1.0
    while len(answered) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, min(resend_at, deadline) - time.monotonic())):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            answered.append(s)
        if time.monotonic() >= resend_at:
            resend_at = time.monotonic() + 1.0
            for key in list(sel.get_map().values()):
                for d in socks[key.fileobj]:  # type: ignore[index]
                    key.fileobj.send(d)  # type: ignore[union-attr]
    sel.close()
    return answered


def open_pending(port: int, sources: list[str], keep: list[socket.socket]) -> int:
    """Half-done handshakes from ``sources`` (one per entry): cookie exchange, the
    ClientHello with the cookie, the server's first flight received, then silence."""
    opened = 0
    for start in range(0, len(sources), 50):
        clients: dict[socket.socket, Client] = {}
        for ip in sources[start : start + 50]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            s.connect((HOST, port))
            s.setblocking(False)
            clients[s] = Client(psk_context(b"flood", b"f" * 32))
            keep.append(s)  # kept open: a port is never reused by the next half-done one
        hellos = {s: c.start() for s, c in clients.items()}
        second: dict[socket.socket, list[bytes]] = {}
        for s in _exchange(hellos, time.monotonic() + 30):
            c = clients[s]
            c.receive(s.recv(65536))  # the HelloVerifyRequest
            second[s] = c.outgoing()  # the ClientHello with the cookie
        for s in _exchange(second, time.monotonic() + 60):
            s.recv(65536)  # the first datagram of the server's flight: the state exists
            opened += 1
    return opened


def garbage_cost(broker: Broker, count: int, seconds: float) -> dict[str, float]:
    """Broker CPU per garbage datagram (net of its background timer work)."""
    probe = Client(psk_context(b"probe", b"p" * 32)).start()[0]  # cookie-less ClientHello
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((GARBAGE_SOURCE, 0))
    s.connect((HOST, broker.port))
    s.settimeout(30)
    try:
        sent = 0
        cpu0, t0 = cpu_seconds(broker.pid), time.monotonic()
        while sent < count and time.monotonic() - t0 < seconds:
            for _ in range(BATCH):
                s.send(GARBAGE)
            s.send(probe)
            s.recv(65536)  # HelloVerifyRequest: the batch before it was processed
            sent += BATCH + 1
        wall, cpu = time.monotonic() - t0, cpu_seconds(broker.pid) - cpu0
    finally:
        s.close()
    return {"datagrams": sent, "wall_s": wall, "cpu_s": cpu}


def idle_cpu_rate(broker: Broker, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(broker.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(broker.pid) - cpu0) / (time.monotonic() - t0)


def device_latency(broker: Broker, n: int) -> list[float]:
    ctx = psk_context(PSK_ID.encode(), PSK)
    out: list[float] = []
    for i in range(n):
        t0 = time.monotonic()
        session = Session(ctx, broker.port, deadline=30.0)
        session.send(request_bytes(i + 1, Code.POST, ("up", "telemetry"), b'{"t":1}'))
        session.recv(timeout=30.0)
        out.append(time.monotonic() - t0)
        session.close()
    return out


def measure(
    broker: Broker, levels: list[int], garbage: int, seconds: float
) -> list[dict[str, Any]]:
    keep: list[socket.socket] = []
    results: list[dict[str, Any]] = []
    device_latency(broker, 3)  # warm up (resolver cache, code paths)
    time.sleep(1.0)
    base_rss = rss_bytes(broker.pid)
    opened = 0
    try:
        for level in levels:
            t0 = time.monotonic()
            want = level - opened
            if want > 0:
                sources = [FLOOD_SOURCES[(opened + i) % len(FLOOD_SOURCES)] for i in range(want)]
                opened += open_pending(broker.port, sources, keep)
            open_s = time.monotonic() - t0
            time.sleep(1.0)
            rss = rss_bytes(broker.pid)
            background = idle_cpu_rate(broker, 2.0)
            g = garbage_cost(broker, garbage, seconds)
            net_cpu = max(0.0, g["cpu_s"] - background * g["wall_s"])
            lat = device_latency(broker, 10)
            row = {
                "pending": opened,
                "open_s": round(open_s, 2),
                "background_cpu_pct": round(100 * background, 1),
                "garbage_datagrams": g["datagrams"],
                "garbage_wall_s": round(g["wall_s"], 3),
                "garbage_cpu_us_per_datagram": round(g["cpu_s"] / g["datagrams"] * 1e6, 1),
                "garbage_net_cpu_us_per_datagram": round(net_cpu / g["datagrams"] * 1e6, 1),
                "handshake_post_p50_ms": round(pct(lat, 50) * 1000, 1),
                "handshake_post_max_ms": round(max(lat) * 1000, 1),
                "rss_mb": round(rss / 2**20, 1),
                "kb_per_pending": round((rss - base_rss) / opened / 1024, 1) if opened else None,
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for s in keep:
            s.close()
    return results


def export_rev(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0,1000,5000", help="pending handshakes, ascending")
    ap.add_argument("--garbage", type=int, default=2000, help="garbage datagrams per level")
    ap.add_argument("--seconds", type=float, default=30.0, help="cap of each garbage phase")
    ap.add_argument("--before", help="also measure the broker of this git revision, first")
    a = ap.parse_args()
    levels = sorted(int(x) for x in a.levels.split(","))
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs")
    if shutil.which("taskset") is None:
        sys.exit("taskset not found")
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-flood-"))
    ca = devcerts.make_ca("bench CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp / "server.pem", tmp / "server.key")
    dev = devcerts.issue(ca, "bench-dev")
    redis = EmbeddedRedis().start()
    subprocess.run(["taskset", "-cp", "1", str(redis.pid)], check=False, capture_output=True)
    kek = generate_kek_line("bench")
    asyncio.run(provision(redis.url, kek, dev.cert_pem, ca.cert_pem))
    runs: dict[str, Any] = {}
    trees = [("after", ROOT)]
    if a.before:
        trees.insert(0, ("before", export_rev(a.before, tmp / "before-src")))
    try:
        for label, src in trees:
            broker = start_broker(src, tmp, redis.url, kek, max(levels) + 1000)
            try:
                runs[label] = {
                    "source": a.before if label == "before" else "this checkout",
                    "levels": measure(broker, levels, a.garbage, a.seconds),
                }
            finally:
                broker.stop()
    finally:
        redis.close()
        shutil.rmtree(tmp, ignore_errors=True)
    header = (
        f"{'run':<8}{'pending':>8}{'open s':>8}{'bg CPU %':>9}{'CPU/garbage us':>16}"
        f"{'net us':>8}{'hs+POST p50 ms':>16}{'max ms':>8}{'KB/pending':>11}"
    )
    print(header)
    for label, run in runs.items():
        for r in run["levels"]:
            kb = "" if r["kb_per_pending"] is None else f"{r['kb_per_pending']:.1f}"
            print(
                f"{label:<8}{r['pending']:>8}{r['open_s']:>8.1f}{r['background_cpu_pct']:>9.1f}"
                f"{r['garbage_cpu_us_per_datagram']:>16.1f}"
                f"{r['garbage_net_cpu_us_per_datagram']:>8.1f}"
                f"{r['handshake_post_p50_ms']:>16.1f}{r['handshake_post_max_ms']:>8.1f}{kb:>11}"
            )
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
