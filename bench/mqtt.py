"""MQTT over mTLS: corem_ingress beside mosquitto 2.0, same load generator, one run.

    .venv/bin/python bench/mqtt.py [--connects N] [--messages N] [--idle 1000,10000]

Starts its own redis-server, our broker (``python -m corem_ingress serve``, MQTT only)
and ``/usr/sbin/mosquitto`` (TLS, require_certificate, set_tcp_nodelay), each on a free
loopback port with its config in a temp dir. Brokers are pinned to CPU 0; this load
generator and Redis to CPU 1. Measures, per broker:

- TLS connects/s (connect + mTLS handshake + CONNECT/CONNACK + DISCONNECT) and broker CPU
  per connection;
- broker CPU per QoS 0 and per QoS 1 message (ours includes the Redis append; mosquitto
  has no subscriber, so it only parses and drops);
- RSS per idle mTLS connection at each --idle count;
- the same connects and messages again as MQTT 5.0 clients (``*_v5``; ``--no-v5`` skips).

Bounded: every phase has a count and a timeout. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ holds http.py, which would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for bench.*

from bench import harness  # noqa: E402
from bench.procstat import cpu_seconds, rss_bytes  # noqa: E402
from corem_ingress import devcerts  # noqa: E402
from corem_ingress.adapters.mqtt import codec  # noqa: E402
from corem_ingress.app import redis_client  # noqa: E402
from corem_ingress.core.identity import CredentialKind  # noqa: E402
from corem_ingress.core.psk import KeyRing, generate_kek_line  # noqa: E402
from corem_ingress.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from corem_ingress.store.keys import KeySchema  # noqa: E402
from corem_ingress.store.registry import Registry  # noqa: E402

MOSQUITTO = "/usr/sbin/mosquitto"


# -- process measurements ----------------------------------------------------------------------


@dataclass
class Device:
    device_id: str
    cert: Path
    key: Path
    ctx: ssl.SSLContext | None = None

    def context(self, ca: Path) -> ssl.SSLContext:
        if self.ctx is None:
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.load_cert_chain(str(self.cert), str(self.key))
            self.ctx = ctx
        return self.ctx


@dataclass
class Broker:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    results: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- setup -------------------------------------------------------------------------------------
def make_pki(d: Path, n: int) -> tuple[Path, Path, Path, list[tuple[Path, Path, str]]]:
    ca = devcerts.make_ca("bench CA")
    ca.write(d / "ca.pem", d / "ca.key")
    server = devcerts.issue(ca, "localhost", server=True)
    server.write(d / "server.pem", d / "server.key")
    (d / "dev").mkdir()
    devices = []
    for i in range(n):
        dev = devcerts.issue(ca, f"bench-{i}")
        cert, key = d / "dev" / f"{i}.pem", d / "dev" / f"{i}.key"
        dev.write(cert, key)
        devices.append((cert, key, dev.cert_pem.decode()))
    return d / "ca.pem", d / "server.pem", d / "server.key", devices


async def provision(url: str, kek: str, pems: list[str], ca_pem: bytes) -> list[str]:
    client = redis_client(url)
    registry = Registry(
        client,
        KeySchema("corem"),
        keyring=KeyRing.parse(kek),
        api_key_overlap=60,
        api_key_overlap_max=3600,
    )
    sem = asyncio.Semaphore(64)
    await registry.add_ca("bench", ca_pem, actor="bench")  # the tenant's trust anchor

    async def one(i: int, pem: str) -> str:
        async with sem:
            r = await registry.provision(
                "bench", f"hw-{i}", CredentialKind.X509, actor="bench", cert_pem=pem
            )
            return r.device.device_id

    ids = await asyncio.gather(*(one(i, p) for i, p in enumerate(pems)))
    await client.aclose()
    return list(ids)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError("broker did not start listening")


def start_ours(
    tmp: Path,
    redis_url: str,
    kek: str,
    ca: Path,
    cert: Path,
    key: Path,
    name: str = "corem_ingress",
    loop: str = "",
    src: Path | None = None,
) -> Broker:
    """Our broker; ``src``: an exported older tree (``--before``) instead of this one."""
    port = free_port()
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": kek,
        "COREM_NODE_ID": f"bench-{_tag(name)}",
        "COREM_STATE_DIR": str(tmp / f"state-{_tag(name)}"),
        "COREM_LOGGING_FORMAT": "json",
        "COREM_LOGGING_LEVEL": "warning",
        "COREM_HEALTH_PORT": "0",
        "COREM_HTTP_ENABLED": "false",
        "COREM_COAP_ENABLED": "false",
        "COREM_MQTT_PORT": str(port),
        "COREM_MQTT_SERVER_CERT": str(cert),
        "COREM_MQTT_SERVER_KEY": str(key),
        "COREM_MQTT_CLIENT_CA_FILES": str(ca),
        "COREM_MQTT_BACKLOG": "4096",
    }
    if loop:
        env["COREM_EVENT_LOOP"] = loop
    if src is not None:
        env["PYTHONPATH"] = str(src)
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        harness.pinned([sys.executable, "-m", "corem_ingress", "serve"], harness.SERVER_CPU),
        env=env,
        cwd=src,
        stdout=log,
        stderr=log,
    )
    wait_port(port, proc)
    return Broker(name, port, proc)


def start_mosquitto(tmp: Path, ca: Path, cert: Path, key: Path) -> Broker:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"""per_listener_settings false
user root
persistence false
log_dest none
allow_anonymous true
set_tcp_nodelay true
max_keepalive 1200
listener {port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
tls_version tlsv1.2
"""
    )
    proc = subprocess.Popen(
        harness.pinned([MOSQUITTO, "-c", str(conf)], harness.SERVER_CPU),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "mosquitto.log", "wb"),  # noqa: SIM115
    )
    wait_port(port, proc)
    return Broker("mosquitto", port, proc)


# -- the load generator (blocking TLS sockets, threads; the same for both brokers) ---------------
_BUFS: dict[int, bytes] = {}


def read_packet(sock: ssl.SSLSocket) -> bytes:
    """One whole packet; bytes read past it are kept for the next call on this socket."""
    buf = _BUFS.pop(id(sock), b"")
    while True:
        framed = codec.frame(buf, 1 << 20)
        if framed is not None and len(buf) >= framed[2]:
            if len(buf) > framed[2]:
                _BUFS[id(sock)] = buf[framed[2] :]
            return buf[: framed[2]]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by broker")
        buf += chunk


def open_session(
    port: int, ca: Path, dev: Device, keepalive: int = 1200, version: int = 4
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = dev.context(ca).wrap_socket(raw, server_hostname="localhost")
    connect = codec.Connect(version, dev.device_id, True, keepalive, None, None)
    sock.sendall(codec.encode_connect(connect))
    connack = read_packet(sock)
    # 3.1.1: exactly 20 02 00 00; MQTT 5: reason code 0, then the CONNACK's properties.
    if connack[0] != 0x20 or connack[3] != 0 or (version == 4 and len(connack) != 4):
        raise ConnectionError(f"CONNACK {connack!r}")
    return sock


def connect_cycle(port: int, ca: Path, dev: Device, version: int = 4) -> None:
    sock = open_session(port, ca, dev, version=version)
    sock.sendall(b"\xe0\x00")
    sock.close()


def measure(pid: int, fn: Callable[[], None]) -> tuple[float, float]:
    """(broker CPU seconds, wall seconds) spent while ``fn`` runs."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    fn()
    return cpu_seconds(pid) - c0, time.perf_counter() - t0


def bench_connects(
    b: Broker, ca: Path, devices: list[Device], n: int, threads: int, version: int = 4
) -> None:
    pool = devices[: max(threads * 4, 64)]
    suffix = "_v5" if version == 5 else ""
    # Warm up (and fill our resolver cache, as in steady state).
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda d: connect_cycle(b.port, ca, d, version), pool))

    def run() -> None:
        lock = threading.Lock()
        counter = iter(range(n))

        def worker(w: int) -> None:
            mine = pool[w::threads]
            j = 0
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                connect_cycle(b.port, ca, mine[j % len(mine)], version)
                j += 1

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(worker, range(threads)))

    cpu, wall = measure(b.pid, run)
    b.results[f"connects_per_s{suffix}"] = n / wall
    b.results[f"cpu_us_per_connect{suffix}"] = cpu / n * 1e6


def bench_messages(
    b: Broker,
    ca: Path,
    dev: Device,
    n: int,
    qos: int,
    done: Callable[[int], None],
    version: int = 4,
) -> None:
    topic = f"devices/{dev.device_id}/up/telemetry"
    payload = b'{"temp":21.5,"hum":40}'
    sock = open_session(b.port, ca, dev, version=version)
    window = 16
    props = b"\x00" if version == 5 else None  # an MQTT 5 PUBLISH: empty properties

    def run() -> None:
        if qos == 0:
            batch = codec.encode_publish(topic, payload, 0, properties=props) * 500
            for _ in range(n // 500):
                sock.sendall(batch)
            sock.sendall(b"\xc0\x00")
            while read_packet(sock) != b"\xd0\x00":
                pass
            done(n)
        else:
            pid = 0
            for _ in range(n // window):
                out = []
                for _ in range(window):
                    pid = pid % 65535 + 1
                    out.append(codec.encode_publish(topic, payload, 1, pid, properties=props))
                sock.sendall(b"".join(out))
                for _ in range(window):
                    if read_packet(sock)[0] != 0x40:
                        raise ConnectionError("expected PUBACK")

    cpu, _wall = measure(b.pid, run)
    b.results[f"cpu_us_per_msg_qos{qos}{'_v5' if version == 5 else ''}"] = cpu / n * 1e6
    sock.sendall(b"\xe0\x00")
    sock.close()


def bench_idle(b: Broker, ca: Path, devices: list[Device], n: int, threads: int) -> list[Any]:
    time.sleep(1.0)
    before = rss_bytes(b.pid)
    with ThreadPoolExecutor(threads) as ex:
        socks = list(ex.map(lambda d: open_session(b.port, ca, d), devices[:n]))
    time.sleep(2.0)
    after = rss_bytes(b.pid)
    b.results[f"rss_kb_per_idle_conn_{n}"] = (after - before) / n / 1024
    b.results[f"rss_mb_total_{n}"] = after / 2**20
    return socks


def close_all(socks: list[Any]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


# -- mosquitto forwarding to one subscriber (the like-for-like peer of a stored QoS 0) -----------
class Subscriber:
    """One mTLS subscriber on the peer, counting forwarded bytes (QoS 0: fixed-size PUBLISHes)."""

    def __init__(self, port: int, ca: Path, dev: Device, topic_filter: str) -> None:
        self.sock = open_session(port, ca, dev)
        self.sock.sendall(codec.encode_subscribe(1, [(topic_filter, 0)]))
        if read_packet(self.sock)[0] != 0x90:
            raise ConnectionError("expected SUBACK")
        self.received = len(_BUFS.pop(id(self.sock), b""))
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(1.0)
        while not self._stop:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)

    def wait_for(self, n_bytes: int, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while self.received < n_bytes and time.monotonic() < end:
            time.sleep(0.005)
        return self.received >= n_bytes

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()


# -- main ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def started(items: list[Broker | EmbeddedRedis]) -> Iterator[None]:
    try:
        yield
    finally:
        for item in reversed(items):
            if isinstance(item, Broker):
                item.stop()
            else:
                item.close()


#: Ratios reported per run (ours ÷ the peer's of the same run), then as median and spread.
#: QoS 0 is compared with mosquitto forwarding to one subscriber (it delivers what it gets,
#: as we store it); the parse-and-drop figure stays beside it for continuity.
RATIOS = {
    "cpu_us_per_connect": ("cpu_us_per_connect", "cpu_us_per_connect"),
    "cpu_us_per_msg_qos0_vs_fwd": ("cpu_us_per_msg_qos0", "cpu_us_per_msg_qos0_fwd"),
    "cpu_us_per_msg_qos0": ("cpu_us_per_msg_qos0", "cpu_us_per_msg_qos0"),
    "cpu_us_per_msg_qos1": ("cpu_us_per_msg_qos1", "cpu_us_per_msg_qos1"),
    "cpu_us_per_connect_v5": ("cpu_us_per_connect_v5", "cpu_us_per_connect_v5"),
    "cpu_us_per_msg_qos0_v5": ("cpu_us_per_msg_qos0_v5", "cpu_us_per_msg_qos0_v5"),
    "cpu_us_per_msg_qos1_v5": ("cpu_us_per_msg_qos1_v5", "cpu_us_per_msg_qos1_v5"),
}
QUICK = {"connects": 200, "messages": 10_000, "idle": "200"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--idle", default="1000,10000")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--only", choices=["corem_ingress", "mosquitto"], default=None)
    ap.add_argument("--no-v5", action="store_true", help="skip the MQTT 5.0 runs")
    ap.add_argument(
        "--loops",
        default="",
        help="run our broker once per event loop named (e.g. asyncio,uvloop), side by side",
    )
    ap.add_argument("--profile", metavar="DIR", help="py-spy profiles of our message phases")
    ap.add_argument("--before", metavar="REV", help="also run our broker of git revision REV")
    harness.add_run_args(ap)
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    idle_counts = [int(x) for x in args.idle.split(",") if x]
    n_devices = max([*idle_counts, args.threads * 4, 64]) + 2

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # brokers inherit it
    if hard < max(idle_counts, default=0) + 1000:
        print(f"RLIMIT_NOFILE hard limit {hard} is too low for {idle_counts}", file=sys.stderr)
        return 2
    if not Path(MOSQUITTO).exists():
        print(f"needs {MOSQUITTO}", file=sys.stderr)
        return 2
    if not harness.can_pin():
        print("warning: taskset or a second CPU missing: nothing is pinned", file=sys.stderr)
    env_info = harness.environment()
    harness.pin_self(harness.LOADGEN_CPU)  # children (redis) inherit CPU 1

    tmp = Path(tempfile.mkdtemp(prefix="corem-bench-mqtt-"))
    try:
        t0 = time.monotonic()
        ca, srv_cert, srv_key, pki = make_pki(tmp, n_devices)
        kek = generate_kek_line("bench")
        redis = EmbeddedRedis().start()
        ids = asyncio.run(provision(redis.url, kek, [p for _, _, p in pki], ca.read_bytes()))
        devices = [Device(i, c, k) for i, (c, k, _) in zip(ids, pki, strict=True)]
        print(f"setup: {n_devices} devices in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        loops = [x for x in args.loops.split(",") if x]
        brokers: list[Broker] = []
        if args.only != "mosquitto" and args.before:
            src = harness.export_rev(args.before, tmp / "before-src")
            name = f"corem_ingress@{args.before}"
            brokers.append(start_ours(tmp, redis.url, kek, ca, srv_cert, srv_key, name, "", src))
        if args.only != "mosquitto":
            for loop in loops or [""]:
                name = f"corem_ingress[{loop}]" if loop else "corem_ingress"
                brokers.append(start_ours(tmp, redis.url, kek, ca, srv_cert, srv_key, name, loop))
        if args.only != "corem_ingress":
            brokers.append(start_mosquitto(tmp, ca, srv_cert, srv_key))
        runs: list[dict[str, dict[str, float]]] = []
        with started([redis, *brokers]):
            for i in range(args.runs):
                run: dict[str, dict[str, float]] = {}
                for b in brokers:  # ours and the peer, one after the other, in every run
                    b.results = {}
                    run_messages(b, ca, devices, args, redis)
                    run[b.name] = dict(b.results)
                runs.append(run)
                print(f"run {i + 1}/{args.runs}: {json.dumps(run)}", file=sys.stderr)
            idle = {}
            for b in brokers:
                b.results = {}
                for n in idle_counts:
                    socks = bench_idle(b, ca, devices, n, args.threads)
                    close_all(socks)
                    time.sleep(1.0)
                idle[b.name] = dict(b.results)
            report(brokers, runs, idle, env_info, args)  # before the (optional) profiles
            if args.profile:
                for b in brokers:
                    if b.name.startswith("corem_ingress"):
                        try:
                            profile_messages(b, ca, devices, args, redis, Path(args.profile))
                        except (OSError, ConnectionError) as exc:
                            print(f"profile of {b.name} failed: {exc!r}", file=sys.stderr)
                            log = tmp / f"{b.name}.log"
                            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    except BaseException:
        for log in sorted(tmp.glob("*.log")):  # what the brokers said, before it goes
            tail = log.read_text(errors="replace").strip().splitlines()[-25:]
            print(f"{log.name}: " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_messages(
    b: Broker,
    ca: Path,
    devices: list[Device],
    args: argparse.Namespace,
    redis: EmbeddedRedis,
) -> None:
    """One run's connects and messages on ``b`` (3.1.1, then 5.0 unless --no-v5)."""
    stream_len = _stream_len(redis)
    redis_pid = redis.pid or 0
    ours = b.name.startswith("corem_ingress")
    for version in (4,) if args.no_v5 else (4, 5):
        suffix = "_v5" if version == 5 else ""
        bench_connects(b, ca, devices, args.connects, args.threads, version)
        for qos in (0, 1):
            r0 = cpu_seconds(redis_pid)
            base = stream_len()

            def done(n: int, base: int = base) -> None:
                if not ours:
                    return
                end = time.monotonic() + 60
                while stream_len() < base + n and time.monotonic() < end:
                    time.sleep(0.01)

            bench_messages(b, ca, devices[-1], args.messages, qos, done, version)
            if ours:
                b.results[f"redis_cpu_us_per_msg_qos{qos}{suffix}"] = (
                    (cpu_seconds(redis_pid) - r0) / args.messages * 1e6
                )
    if not ours:
        bench_forwarding(b, ca, devices, args.messages)


def bench_forwarding(b: Broker, ca: Path, devices: list[Device], n: int) -> None:
    """The peer's QoS 0 PUBLISH forwarded to one subscriber: CPU per message until the
    subscriber has received every byte of all ``n`` (nothing dropped, or it says so)."""
    dev = devices[-1]
    topic = f"devices/{dev.device_id}/up/telemetry"
    size = len(codec.encode_publish(topic, b'{"temp":21.5,"hum":40}', 0))
    sub = Subscriber(b.port, ca, devices[-2], "devices/+/up/#")
    try:

        def done(count: int) -> None:
            sub.wait_for(count * size)

        before = b.results.get("cpu_us_per_msg_qos0")
        bench_messages(b, ca, dev, n, 0, done)
        b.results["cpu_us_per_msg_qos0_fwd"] = b.results["cpu_us_per_msg_qos0"]
        if before is not None:
            b.results["cpu_us_per_msg_qos0"] = before
        b.results["fwd_delivered_fraction"] = min(1.0, sub.received / (n * size))
    finally:
        sub.close()


def profile_messages(
    b: Broker,
    ca: Path,
    devices: list[Device],
    args: argparse.Namespace,
    redis: EmbeddedRedis,
    out: Path,
) -> None:
    """py-spy (collapsed stacks, then a text summary) of our QoS 0 and QoS 1 phases, in an
    extra pass that is not in the figures (the sampler shares the machine)."""
    from bench import pyspy

    stream_len = _stream_len(redis)
    tag = _tag(b.name.replace("corem_ingress", "mqtt"))
    for qos in (0, 1):
        base = stream_len()

        def done(n: int, base: int = base) -> None:
            end = time.monotonic() + 60
            while stream_len() < base + n and time.monotonic() < end:
                time.sleep(0.01)

        with pyspy.recording(b.pid, out / f"{tag}_qos{qos}"):
            # Fewer messages: two samplers share the load generator's core.
            bench_messages(b, ca, devices[-1], min(args.messages, 20_000), qos, done)


def _tag(name: str) -> str:
    """A side's name as a file name: ``corem_ingress[uvloop]`` → ``corem_ingress_uvloop``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")


def _stream_len(redis: EmbeddedRedis) -> Callable[[], int]:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis.url)

    def length() -> int:
        return int(client.xlen("corem:uplink:{bench}"))

    return length


def report(
    brokers: list[Broker],
    runs: list[dict[str, dict[str, float]]],
    idle: dict[str, dict[str, float]],
    env_info: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    peer = next((b.name for b in brokers if b.name == "mosquitto"), None)
    ratios = {}
    for b in brokers:
        if b.name.startswith("corem_ingress") and peer:
            for key, (ours_m, peer_m) in RATIOS.items():
                ratios[f"{b.name}:{key}"] = (ours_m, b.name, peer, peer_m)
    summary = harness.summarize_runs(runs)
    summary["ratios"] = {}
    for name, (ours_m, ours, peer_name, peer_m) in ratios.items():
        per_run = [
            r[ours][ours_m] / r[peer_name][peer_m]
            for r in runs
            if r.get(ours, {}).get(ours_m) and r.get(peer_name, {}).get(peer_m)
        ]
        if per_run:
            summary["ratios"][name] = harness.spread(per_run)
    keys = sorted({k for b in brokers for k in summary.get(b.name, {})})
    width = max(len(k) for k in keys) if keys else 10
    print(f"{len(runs)} runs; median (min-max); load average at start {env_info['load_average']}")
    print(f"{'metric':<{width}}  " + "  ".join(f"{b.name:>26}" for b in brokers))
    for k in keys:
        cells = "  ".join(f"{harness.fmt_spread(summary[b.name].get(k)):>26}" for b in brokers)
        print(f"{k:<{width}}  {cells}")
    for name, s in summary["ratios"].items():
        print(f"ratio {name}: {harness.fmt_spread(s, 2)}x")
    for name, res in idle.items():
        for k, v in sorted(res.items()):
            print(f"{name} {k}: {v:.1f}")
    flat: dict[str, Any] = {}
    for b in brokers:
        flat[b.name] = {k: s["median"] for k, s in summary.get(b.name, {}).items()}
        flat[b.name].update(idle.get(b.name, {}))
    flat["summary"] = summary
    flat["runs"] = len(runs)
    flat["env"] = env_info
    flat["quick"] = args.quick
    print(json.dumps(flat, sort_keys=True))


if __name__ == "__main__":
    raise SystemExit(main())
