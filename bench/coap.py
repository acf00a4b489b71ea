"""CoAP/DTLS benchmark: our listener beside libcoap's coap-server-openssl, in one run.

    .venv/bin/python bench/coap.py [--handshakes N] [--requests N] [--idle N] [--seconds S]
        [--runs 3] [--phases a,b] [--py-spy DIR --tag before|after] [--profile] [--before REV]

Loopback only. Each server runs pinned to CPU 0 (taskset), the single load generator
(this process, an in-process pyOpenSSL DTLS client) pinned to CPU 1; the private
redis-server for our node is pinned to CPU 1 too. Server CPU is read from
/proc/PID/stat (utime+stime) around each phase, memory from VmRSS. Measured:

* PSK handshakes/s (sequential, handshake + close_notify) and server CPU per handshake;
* ECDHE-ECDSA (client certificate) handshakes, same figures;
* server CPU per request on one session, 1 and 16 outstanding CON GETs answered 2.05
  without storage (ours: ``GET /down`` with Observe 1, i.e. an observation cancel, which
  the device site answers from memory; libcoap: ``GET /``, its index), plus ours only:
  ``GET /down`` as a poll (``poll_down_1``: the queued-downlink pop in Redis) and
  ``POST /up/telemetry`` (``uplink_post_1``: the Redis XADD);
* memory per idle session (N sessions opened, RSS delta / N; first run only).

Every phase runs ``--runs`` times (default 3) on the same pair of servers, ours and
libcoap's alternately; each figure is the median of the runs with its spread (min-max),
each ratio computed within a run. ``--py-spy DIR`` samples our server with py-spy during
the first run of each phase (``DIR/coap_<phase>_<tag>.svg`` flame graphs and a text
summary ``.txt``); ``--profile`` runs it under cProfile instead (one pstats file).
``--before REV`` also runs our broker of git revision REV (``corem@REV``, the same build:
compiled in place when this checkout is) in the same runs, ratios computed for both.

Targets (issue 18): PSK handshake and request CPU <= 1.5x libcoap. Prints a table and one
JSON line (``results``: medians, ``spread``: median/min/max/n per figure, ``ratios``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds http.py and mqtt.py: never let them shadow the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from aiocoap import CON, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from OpenSSL import SSL  # noqa: E402

from bench.harness import spread  # noqa: E402
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


#: (code, Uri-Path, payload, Observe or None)
Request = tuple[Code, tuple[str, ...], bytes, int | None]


def request_bytes(mid: int, request: Request) -> bytes:
    code, path, payload, observe = request
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = CON, mid & 0xFFFF, mid.to_bytes(4, "big")
    m.opt.uri_path = path
    if observe is not None:
        m.opt.observe = observe
    return bytes(m.encode())


@dataclass
class Target:
    name: str
    pid: int
    port: int
    #: A request answered 2.05 without storage.
    request: Request


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
    request: Request | None = None,
) -> dict[str, float]:
    req = request or target.request
    s = Session(ctx, target.port)
    mid = 1
    for _ in range(20):  # warm up
        s.send(request_bytes(mid, req))
        answer = Message.decode(s.recv())
        if not answer.code.is_successful():
            raise RuntimeError(f"{target.name} answered {answer.code} to {req}")
        mid += 1
    sent = received = 0
    cpu0, t0 = cpu_seconds(target.pid), time.perf_counter()
    while received < n and time.perf_counter() - t0 < seconds:
        while sent - received < window and sent < n:
            s.send(request_bytes(mid, req))
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


def start_pinned(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", "0", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def export_built(rev: str, into: Path) -> Path:
    """The package of git revision ``rev`` under ``into`` (``--before``), compiled with
    mypyc in place when this checkout runs compiled (the same build on both sides)."""
    into.mkdir(parents=True)
    files = ["corem_ingress", "setup.py", "pyproject.toml", "README.md"]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, *files], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    from corem_ingress import compiled

    if compiled.build() == "compiled":
        env = {k: v for k, v in os.environ.items() if k not in ("COREM_PURE", "COREM_NO_COMPILE")}
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=into,
            env=env,
            check=True,
            capture_output=True,
        )
        if not list((into / "corem_ingress").rglob("*.so")):
            sys.exit(f"--before {rev}: the mypyc build of that revision failed")
    return into


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


#: Ours only (no libcoap equivalent): the downlink poll and the uplink, both with Redis.
POLL_DOWN: Request = (Code.GET, ("down",), b"", None)
UPLINK_POST: Request = (Code.POST, ("up", "telemetry"), b'{"t":21.5}', None)
CPU_PHASES = ("psk_handshake", "ecdsa_handshake", "request_1", "request_16")


@contextlib.contextmanager
def py_spy(pid: int, stem: Path | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs: ``stem.svg`` (flame graph) and
    ``stem.txt`` (the functions with most samples, inclusive). No-op when ``stem`` is None."""
    tool = Path(sys.executable).parent / "py-spy"
    if stem is None:
        yield
        return
    if not tool.exists():
        sys.exit("--py-spy needs py-spy in the venv: .venv/bin/pip install py-spy")
    raw = stem.with_suffix(".collapsed")
    outputs = (("flamegraph", stem.with_suffix(".svg")), ("raw", raw))
    record = [
        str(tool),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "499",
        "--nonblocking",
        "--function",
    ]
    procs = [
        subprocess.Popen(
            [*record, "--format", fmt, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, out in outputs
    ]
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        if raw.exists():
            stem.with_suffix(".txt").write_text(summarise_stacks(raw.read_text()))
            raw.unlink()


IDLE_FRAMES = ("EpollSelector.select", "select (selectors.py")


def summarise_stacks(collapsed: str, top: int = 40) -> str:
    """py-spy's collapsed stacks -> the functions with the largest share of samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_FRAMES):
            continue  # the loop waiting in epoll: idle, not work
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples of work (the loop's wait in epoll excluded)"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out += ["", f"-- top {top} by {title} share --"]
        out += [f"{100 * n / total:6.1f}%  {f}" for f, n in counter.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--handshakes", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0, help="cap per phase")
    ap.add_argument("--runs", type=int, default=3, help="runs per phase (figures: >= 3)")
    ap.add_argument("--profile", action="store_true", help="cProfile our server process")
    ap.add_argument("--py-spy", type=Path, default=None, help="flame graphs into this dir")
    ap.add_argument("--tag", default="run", help="file name suffix of the py-spy profiles")
    ap.add_argument("--phases", default="", help="comma-separated subset of the phases")
    ap.add_argument("--before", metavar="REV", help="also run our broker of git revision REV")
    a = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs")
    for tool in ("taskset", "coap-server-openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")
    os.sched_setaffinity(0, {1})
    load = os.getloadavg()
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
    before_proc = before_port = None
    if a.before:
        src = export_built(a.before, tmp / "before-src")
        before_port = free_port()
        benv = {**coap_broker_env(tmp, redis.url, kek, before_port), "PYTHONPATH": str(src)}
        benv["COREM_STATE_DIR"] = str(tmp / "state-before")
        before_proc = start_pinned([sys.executable, "-m", "corem_ingress", "serve"], benv, src)
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
    #: phase -> server -> one result per run
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        targets = [
            # GET /down with Observe 1 (cancel): the site answers 2.05 from memory.
            Target("corem", ours_proc.pid, ours_port, (Code.GET, ("down",), b"", 1)),
            Target("libcoap", lib_proc.pid, lib_base + 1, (Code.GET, (), b"", None)),
        ]
        procs = {"corem": ours_proc, "libcoap": lib_proc}
        if before_proc is not None and before_port is not None:
            name = f"corem@{a.before}"
            targets.insert(0, Target(name, before_proc.pid, before_port, targets[0].request))
            procs[name] = before_proc
        corem = next(t for t in targets if t.name == "corem")
        ours = [t for t in targets if t.name.startswith("corem")]
        for t in targets:
            wait_ready(t.port, psk_ctx, procs[t.name])
        half = a.requests // 2
        phases: list[tuple[str, Callable[[Target], dict[str, float]], bool]] = [
            ("psk_handshake", lambda t: handshakes(t, psk_ctx, a.handshakes, a.seconds), True),
            (
                "ecdsa_handshake",
                lambda t: handshakes(t, ecdsa_ctx, a.handshakes // 2, a.seconds),
                True,
            ),
            ("request_1", lambda t: requests(t, psk_ctx, a.requests, 1, a.seconds), True),
            ("request_16", lambda t: requests(t, psk_ctx, a.requests, 16, a.seconds), True),
            ("poll_down_1", lambda t: requests(t, psk_ctx, half, 1, a.seconds, POLL_DOWN), False),
            (
                "uplink_post_1",
                lambda t: requests(t, psk_ctx, half, 1, a.seconds, UPLINK_POST),
                False,
            ),
            ("idle_memory", lambda t: idle_memory(t, psk_ctx, a.idle), True),
        ]
        wanted = set(filter(None, a.phases.split(",")))
        if a.py_spy is not None:
            a.py_spy.mkdir(parents=True, exist_ok=True)
        for run in range(max(1, a.runs)):
            for phase, fn, with_peer in phases:
                if (wanted and phase not in wanted) or (phase == "idle_memory" and run > 0):
                    continue
                for t in targets if with_peer else ours:
                    stem = None
                    if a.py_spy is not None and run == 0 and t is corem:
                        stem = a.py_spy / f"coap_{phase}_{a.tag}"
                    with py_spy(t.pid, stem):
                        runs.setdefault(phase, {}).setdefault(t.name, []).append(fn(t))
    finally:
        for proc in (ours_proc, lib_proc, before_proc):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM if proc is lib_proc else signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        redis.close()
    results: dict[str, dict[str, dict[str, float]]] = {}
    spreads: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for phase, by in runs.items():
        for name, rs in by.items():
            keys = [k for k in rs[0] if k != "n"]
            results.setdefault(phase, {})[name] = {
                "n": rs[0]["n"],
                **{k: statistics.median(r[k] for r in rs) for k in keys},
            }
            spreads.setdefault(phase, {})[name] = {k: spread([r[k] for r in rs]) for k in keys}
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; runs: {a.runs}")
    print(
        f"{'phase':<16}{'server':<9}{'n':>7}{'ops/s':>10}"
        f"{'server CPU/op (median, min-max)':>34}{'bytes/session':>15}"
    )
    for phase, by in results.items():
        for name, r in by.items():
            cpu = ""
            if "server_cpu_us" in r:
                s = spreads[phase][name]["server_cpu_us"]
                cpu = f"{s['median']:.0f} us ({s['min']:.0f}-{s['max']:.0f})"
            mem = f"{r['bytes_per_session']:.0f}" if "bytes_per_session" in r else ""
            ops = f"{r['per_s']:.0f}" if "per_s" in r else ""
            print(f"{phase:<16}{name:<9}{r['n']:>7.0f}{ops:>10}{cpu:>34}{mem:>15}")

    ratio_runs: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for phase in CPU_PHASES:
        by = runs.get(phase, {})
        for name in [n for n in by if n.startswith("corem")]:
            pairs = list(zip(by.get(name, []), by.get("libcoap", []), strict=False))
            per_run = [
                o["server_cpu_us"] / p["server_cpu_us"] for o, p in pairs if p["server_cpu_us"]
            ]
            if per_run:
                key = phase if name == "corem" else f"{phase}/{name}"
                ratio_runs[key] = spread(per_run)
                ratios[key] = ratio_runs[key]["median"]
                r = ratio_runs[key]
                print(
                    f"{phase} CPU x libcoap ({name}): {r['median']:.2f}"
                    f" ({r['min']:.2f}-{r['max']:.2f}), target <= 1.5"
                )
    if a.profile:
        print(f"profile: {prof} (python -m pstats)")
    print(
        json.dumps(
            {
                "results": results,
                "spread": spreads,
                "ratios": ratios,
                "ratio_spread": ratio_runs,
                "runs": a.runs,
                "load_average": [round(x, 2) for x in load],
            }
        )
    )


if __name__ == "__main__":
    main()
