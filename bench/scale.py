"""Scale: hold 100,000 idle mTLS MQTT devices and 50,000 DTLS sessions on one node.

    .venv/bin/python -m bench.scale [--mqtt 10000] [--dtls 10000] [--brokers 0] [--shared-ports]
                                    [--broker-env COREM_KEY=VALUE ...]
                                    [--idle-seconds 20] [--ping-seconds 20]
                                    [--max-seconds 360] [--json-out FILE]
    # issue 18's full scale (about 15 minutes on the 2-core machine):
    .venv/bin/python -m bench.scale --mqtt 100000 --dtls 50000 --max-seconds 1800

Loopback only; its own redis-server. The node is ``--brokers`` broker processes
(``python -m corem_ingress serve``, MQTT and CoAP listeners, all pinned to CPU 0), each on
its own ports, or with ``--shared-ports`` all on one MQTT and one CoAP port (``reuse_port``:
the kernel spreads the connections and DTLS flows; each broker's share is read from its
``/metrics``); ``--brokers 0`` picks as many as RLIMIT_NOFILE needs: a process cannot hold more
sockets than its hard limit (20,000 here, and raising a hard limit needs CAP_SYS_RESOURCE,
which this machine does not grant even to root), and every MQTT connection is a socket
(the DTLS sessions of a process share its one UDP socket). The devices are spread over
the brokers round-robin (own ports). The client side is ``bench.scale_load`` processes pinned to
CPU 1, each holding at most ``hard limit - 1000`` sessions from its own loopback source
address (127.0.0.2, .3, ...: one address has 28,000 ephemeral ports towards one port).

* MQTT devices: lean mTLS clients (MQTT 3.1.1, a client certificate per device from a
  bench CA, keepalive 3600 s; pyOpenSSL over memory BIOs, see bench/scale_load.py);
* DTLS sessions: the in-process pyOpenSSL DTLS 1.2 client (``corem_ingress.sim.dtls_client``),
  PSK-AES128-CCM8 with a 32-byte PSK per device, one UDP socket per session.

Measured: the brokers' VmRSS (summed) before, while and after each population connects
(RSS per session = RSS delta / sessions held, also given per 10,000), the brokers' CPU
(utime + stime from /proc, summed) over ``--idle-seconds`` with every session held and no
traffic, then the keep-alive cost: every device sends one keep-alive (MQTT PINGREQ, then
separately a CoAP ping over each DTLS session), paced over ``--ping-seconds``; broker CPU
over the phase minus the idle rate, per keep-alive answered, and what that costs per
10,000 devices at a 60 s and a 300 s keep-alive interval. Bounded: every phase has a
deadline inside ``--max-seconds``; if a population does not fully connect, the count held
is reported with the errors seen. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Any

from bench.procstat import cpu_seconds, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds http.py and mqtt.py: never let them shadow the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
TENANT = "scale"
#: Sockets a broker process keeps beside its MQTT connections (Redis pools, listeners, logs).
BROKER_FD_RESERVE = 2_000
#: The same for a load-generator process.
CLIENT_FD_RESERVE = 1_000


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- orchestrator ------------------------------------------------------------------------------
class LoadGen:
    def __init__(self, role: str, spec: Path, source: str, deadline: float) -> None:
        self.role = role
        self.exited = False
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-m", "bench.scale_load", "--role", role,
             "--spec", str(spec), "--source", source, "--deadline", str(deadline)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(spec.with_suffix(".log"), "wb"),  # noqa: SIM115
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        for raw in out:
            with contextlib.suppress(ValueError), self.cond:
                self.lines.append(json.loads(raw))
                self.cond.notify_all()
        with self.cond:
            self.exited = True
            self.lines.append({"exited": True})
            self.cond.notify_all()

    def next_line(self, timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        with self.cond:
            while not self.lines:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.lines.pop(0)

    def ask(self, command: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()

    def answer(self, key: str, timeout: float) -> dict[str, Any] | None:
        if self.exited:
            return None
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            line = self.next_line(left)
            if line is None or line.get("exited"):
                return None
            if key in line:
                return line
        return None

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _provision_slice(
    url: str, kek: str, ca_pems: tuple[bytes, bytes], kind: str, lo: int, hi: int
) -> list[list[str]]:
    """Runs in a worker process: register devices lo..hi-1 of one kind."""
    return asyncio.run(_provision(url, kek, ca_pems, kind, lo, hi))


async def _provision(
    url: str, kek: str, ca_pems: tuple[bytes, bytes], kind: str, lo: int, hi: int
) -> list[list[str]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from corem_ingress import devcerts
    from corem_ingress.app import redis_client
    from corem_ingress.core.errors import Unavailable
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.core.psk import KeyRing
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry

    key = serialization.load_pem_private_key(ca_pems[1], None)
    ca = devcerts.Issued(x509.load_pem_x509_certificate(ca_pems[0]), key)  # type: ignore[arg-type]
    client = redis_client(url, socket_timeout=60)
    registry = Registry(
        client,
        KeySchema(),
        keyring=KeyRing.parse(kek),
        api_key_overlap=60,
        api_key_overlap_max=3600,
    )
    sem = asyncio.Semaphore(16)  # below the client's pool: no "No connection available"

    async def x509_device(i: int) -> list[str]:
        async with sem:  # the certificate is made here too: never block the loop for long
            leaf = devcerts.issue(ca, f"scale-mqtt-{i}")
            r = await registry.provision(
                TENANT,
                f"scale-mqtt-{i}",
                CredentialKind.X509,
                actor="bench",
                cert_pem=leaf.cert_pem,
            )
        return [r.device.device_id, leaf.cert_pem.decode(), leaf.key_pem.decode()]

    async def psk_device(i: int) -> list[str]:
        async with sem:
            r = await registry.provision(
                TENANT, f"scale-dtls-{i}", CredentialKind.PSK, actor="bench"
            )
        assert r.psk is not None
        return [r.psk.psk_identity, r.psk.psk.hex()]

    make = x509_device if kind == "mqtt" else psk_device

    async def retried(i: int) -> list[str]:
        for attempt in range(5):  # a loaded machine: Redis may be slow to answer
            try:
                return await make(i if attempt == 0 else i + attempt * 10_000_000)
            except Unavailable:
                await asyncio.sleep(1 + attempt)
        raise RuntimeError(f"could not provision device {i}")

    try:
        return list(await asyncio.gather(*(retried(i) for i in range(lo, hi))))
    finally:
        await client.aclose()


def provision(
    url: str, kek: str, ca: Any, n_mqtt: int, n_dtls: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Register the devices from two worker processes (both cores are free at this point)."""
    from corem_ingress.app import redis_client
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry

    async def add_ca() -> None:
        client = redis_client(url)
        try:
            registry = Registry(
                client, KeySchema(), keyring=None, api_key_overlap=60, api_key_overlap_max=3600
            )
            await registry.add_ca(TENANT, ca.cert_pem, actor="bench")  # the trust anchor
        finally:
            await client.aclose()

    asyncio.run(add_ca())
    pems = (ca.cert_pem, ca.key_pem)
    jobs: list[tuple[str, int, int]] = []
    for kind, n in (("mqtt", n_mqtt), ("dtls", n_dtls)):
        step = max(1, math.ceil(n / 16))
        jobs += [(kind, lo, min(n, lo + step)) for lo in range(0, n, step)]
    out: dict[str, list[list[str]]] = {"mqtt": [], "dtls": []}
    # More workers than cores: on a shared machine they get a larger share of it.
    with ProcessPoolExecutor(8) as pool:
        futures = [
            (k, pool.submit(_provision_slice, url, kek, pems, k, lo, hi)) for k, lo, hi in jobs
        ]
        for kind, fut in futures:
            out[kind] += fut.result()
    return out["mqtt"], out["dtls"]


def wait_ready(health_port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("a broker exited during start")
        url = f"http://{HOST}:{health_port}/readyz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("a broker never became ready")


def populate(
    name: str,
    gens: list[LoadGen],
    pids: list[int],
    curve: list[dict[str, Any]],
    base: dict[str, int],
    deadline: float,
) -> dict[str, Any]:
    """Follow the load generators until each has connected its slice (or the deadline)."""
    progress = {id(g): 0 for g in gens}
    results: dict[int, dict[str, Any]] = {}
    while len(results) < len(gens) and (left := deadline - time.monotonic()) > 0:
        for g in gens:
            if id(g) in results:
                continue
            line = g.next_line(min(left, 0.5))
            if line is None:
                continue
            if line.get("exited"):
                results[id(g)] = {"held": 0, "errors": {"loadgen_exited": 1}}
            elif "progress" in line:
                progress[id(g)] = int(line["held"])
                point = {**base, name: sum(progress.values())}
                curve.append({**point, "rss_mb": total_rss(pids) / 2**20})
            elif line.get("done"):
                results[id(g)] = line
                progress[id(g)] = int(line["held"])
    errors: dict[str, int] = {}
    for r in results.values():
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
    if len(results) < len(gens):
        errors["deadline"] = errors.get("deadline", 0) + len(gens) - len(results)
    times = [r["connect_s"] for r in results.values() if r.get("connect_s") is not None]
    return {
        "held": sum(int(r.get("held") or 0) for r in results.values()),
        "errors": errors,
        "connect_s": max(times) if times else None,
    }


def total_rss(pids: list[int]) -> int:
    return sum(rss_bytes(p) for p in pids)


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def per_10k(delta_bytes: int, held: int) -> dict[str, float | None]:
    if not held:
        return {"rss_kb_per_session": None, "rss_mb_per_10k": None}
    return {
        "rss_kb_per_session": round(delta_bytes / held / 1024, 2),
        "rss_mb_per_10k": round(delta_bytes / held * 10_000 / 2**20, 1),
    }


def keepalive_phase(
    gens: list[LoadGen], pids: list[int], idle_rate: float, seconds: float, deadline: float
) -> dict[str, Any]:
    """Every session of ``gens`` sends one keep-alive; broker CPU per keep-alive answered."""
    c0, w0 = total_cpu(pids), time.monotonic()
    for g in gens:
        g.ask(f"ping {seconds}")
    answers = [g.answer("pinged", max(1.0, deadline - time.monotonic())) for g in gens]
    c1, w1 = total_cpu(pids), time.monotonic()
    pinged = sum(int(a["pinged"]) for a in answers if a)
    answered = sum(int(a["answered"]) for a in answers if a)
    busy = max(0.0, (c1 - c0) - idle_rate * (w1 - w0))
    per = busy / answered if answered else None
    out: dict[str, Any] = {
        "pinged": pinged,
        "answered": answered,
        "phase_s": round(w1 - w0, 1),
        "broker_cpu_s": round(c1 - c0, 2),
        "cpu_us_per_keepalive": round(per * 1e6, 1) if per is not None else None,
    }
    for interval in (60, 300):
        # devices / interval keep-alives per second, each costing ``per`` seconds of CPU
        out[f"cpu_percent_per_10k_at_{interval}s"] = (
            round(10_000 / interval * per * 100, 3) if per is not None else None
        )
    return out


def broker_env(
    redis_url: str,
    kek: str,
    work: Path,
    ports: dict[str, int],
    dtls_per_broker: int,
    *,
    shared: bool = False,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
    env.update(
        {
            "COREM_REDIS_URL": redis_url,
            "COREM_PSK_KEK": kek,
            "COREM_HTTP_ENABLED": "0",
            "COREM_HEALTH_PORT": str(ports["health"]),
            "COREM_MQTT_HOST": HOST,
            "COREM_MQTT_PORT": str(ports["mqtt"]),
            "COREM_MQTT_SERVER_CERT": str(work / "server.pem"),
            "COREM_MQTT_SERVER_KEY": str(work / "server.key"),
            "COREM_MQTT_CLIENT_CA_FILES": str(work / "ca.pem"),
            # The devices' keepalive (3600 s): the default cap (1200 s) would close the
            # first devices before a full-scale run ends.
            "COREM_MQTT_MAX_KEEPALIVE_S": "3600",
            "COREM_COAP_HOST": HOST,
            "COREM_COAP_PORT": str(ports["coap"]),
            "COREM_COAP_SERVER_CERT": str(work / "server.pem"),
            "COREM_COAP_SERVER_KEY": str(work / "server.key"),
            "COREM_COAP_CLIENT_CA_FILES": str(work / "ca.pem"),
            # Per-node caps a scale run must raise (docs/operations.md "Scale: limits").
            "COREM_COAP_MAX_SESSIONS": str(dtls_per_broker + 1000),
            "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
            "COREM_COAP_MAX_PENDING_HANDSHAKES_PER_SOURCE": "0",
            "COREM_COAP_IDLE_TIMEOUT_S": "3600",
            "COREM_LOGGING_LEVEL": "warning",
            "COREM_STATE_DIR": str(work / f"state-{ports['health']}"),
            "COREM_REUSE_PORT": "1" if shared else "0",
        }
    )
    return env


def live_sessions(health_port: int) -> dict[str, int]:
    """A broker's ``corem_sessions_live`` by transport (its share on shared ports)."""
    import urllib.request

    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        url = f"http://{HOST}:{health_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("corem_sessions_live{"):
                    labels, _, value = line.rpartition(" ")
                    transport = labels.partition('transport="')[2].partition('"')[0]
                    out[transport] = out.get(transport, 0) + int(float(value))
    return out


def split(items: list[list[Any]], parts: int) -> list[list[list[Any]]]:
    return [items[i::parts] for i in range(parts)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mqtt", type=int, default=10_000)
    ap.add_argument("--dtls", type=int, default=10_000)
    ap.add_argument("--brokers", type=int, default=0, help="0: as many as the fd limit needs")
    ap.add_argument(
        "--shared-ports",
        action="store_true",
        help="all brokers on one MQTT and one CoAP port (reuse_port)",
    )
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--ping-seconds", type=float, default=20.0, help="0: no keep-alive phase")
    ap.add_argument("--max-seconds", type=float, default=360.0, help="bound on the whole run")
    ap.add_argument("--json-out")
    ap.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="COREM_KEY=VALUE",
        help="a setting for every broker (e.g. COREM_COAP_DETACH_OPENSSL=false); repeatable",
    )
    ap.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "corem-bench-scale"),
        help="keep the provisioned devices (Redis snapshot, certificates) here for re-runs",
    )
    args = ap.parse_args()

    from corem_ingress import devcerts
    from corem_ingress.core.psk import generate_kek_line
    from corem_ingress.embedded_redis import EmbeddedRedis, free_port

    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        print("needs taskset and 2 CPUs", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    hard_deadline = t_start + args.max_seconds
    nofile = raise_nofile()  # the brokers and load generators inherit it
    per_broker = max(1000, nofile - BROKER_FD_RESERVE)
    n_brokers = args.brokers or max(1, math.ceil(args.mqtt / per_broker))
    per_client = max(1000, nofile - CLIENT_FD_RESERVE)
    n_mqtt_gens = math.ceil(args.mqtt / per_client)  # 0 when the run has none
    n_dtls_gens = math.ceil(args.dtls / per_client)
    work = Path(tempfile.mkdtemp(prefix="corem-bench-scale-"))
    # Provisioning 150,000 devices takes ~10 minutes here: keep them for the next run.
    cache = Path(args.cache) / f"{args.mqtt}-{args.dtls}" if args.cache else None
    cached = cache is not None and (cache / "done").exists()
    if cache is not None and cached:
        ca = load_ca(cache)
        kek = (cache / "kek").read_text().strip()
    else:
        ca = devcerts.make_ca("scale CA")
        kek = generate_kek_line("bench")
    ca.write(work / "ca.pem", work / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(work / "server.pem", work / "server.key")
    result: dict[str, Any] = {
        "bench": "scale",
        "cpus": os.cpu_count(),
        "nofile_limit": nofile,
        "brokers": n_brokers,
        "shared_ports": args.shared_ports,
        "broker_env": args.broker_env,
        "load_generators": {"mqtt": n_mqtt_gens, "dtls": n_dtls_gens},
        "sysctl": sysctls(),
        "mqtt": {"target": args.mqtt},
        "dtls": {"target": args.dtls},
    }
    curve: list[dict[str, Any]] = []
    if cache is not None and not cached:
        shutil.rmtree(cache, ignore_errors=True)
        (cache / "redis").mkdir(parents=True)
    redis = EmbeddedRedis(data_dir=cache / "redis" if cache else None).start()
    brokers: list[subprocess.Popen[bytes]] = []
    gens: dict[str, list[LoadGen]] = {"mqtt": [], "dtls": []}
    try:
        t0 = time.monotonic()
        if cache is not None and cached:
            mqtt_spec = json.loads((cache / "mqtt.json").read_text())
            dtls_spec = json.loads((cache / "dtls.json").read_text())
        else:
            mqtt_spec, dtls_spec = provision(redis.url, kek, ca, args.mqtt, args.dtls)
            if cache is not None:
                save_cache(cache, redis.url, ca, kek, mqtt_spec, dtls_spec)
        result["provision_s"] = round(time.monotonic() - t0, 1)
        result["provisioned_from_cache"] = cached
        print(f"provisioned {args.mqtt} + {args.dtls} devices in {result['provision_s']} s; "
              f"{n_brokers} broker processes", file=sys.stderr)  # fmt: skip
        ports_of: list[dict[str, int]] = []
        shared = {"mqtt": free_port(), "coap": free_port()}
        # Shared ports: the kernel's spread is not exactly even, leave room for it.
        dtls_cap = math.ceil(args.dtls / n_brokers * (1.25 if args.shared_ports else 1.0))
        for _ in range(n_brokers):
            ports = {"mqtt": free_port(), "coap": free_port(), "health": free_port()}
            if args.shared_ports:
                ports.update(shared)
            ports_of.append(ports)
            env = broker_env(redis.url, kek, work, ports, dtls_cap, shared=args.shared_ports)
            for item in args.broker_env:
                key, _, value = item.partition("=")
                env[key] = value
            brokers.append(
                subprocess.Popen(
                    ["taskset", "-c", "0", sys.executable, "-m", "corem_ingress", "serve"],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=open(work / f"broker-{ports['health']}.log", "wb"),  # noqa: SIM115
                    start_new_session=True,
                )
            )
        for ports, proc in zip(ports_of, brokers, strict=True):
            wait_ready(ports["health"], proc)
        pids = [b.pid for b in brokers]
        time.sleep(2.0)
        rss0 = total_rss(pids)
        result["broker_rss_mb_start"] = round(rss0 / 2**20, 1)
        curve.append({"mqtt": 0, "dtls": 0, "rss_mb": rss0 / 2**20})
        # Each device goes to a broker round-robin (its port in the spec).
        mqtt_items = [[*d, ports_of[i % n_brokers]["mqtt"]] for i, d in enumerate(mqtt_spec)]
        dtls_items = [[*d, ports_of[i % n_brokers]["coap"]] for i, d in enumerate(dtls_spec)]
        del mqtt_spec, dtls_spec
        reserve = args.idle_seconds + 2 * args.ping_seconds + 60  # idle, keep-alive, teardown
        source = iter(f"127.0.0.{k}" for k in range(2, 250))

        def start(role: str, items: list[list[Any]], parts: int, share: float) -> float:
            left = hard_deadline - time.monotonic() - reserve
            if not items:  # this run has none of them
                return time.monotonic()
            for k, part in enumerate(split(items, parts)):
                spec = work / f"{role}-{k}.json"
                spec.write_text(json.dumps(part))
                gens[role].append(LoadGen(role, spec, next(source), left * share))
            return time.monotonic() + left * share + 15

        # MQTT population
        until = start("mqtt", mqtt_items, n_mqtt_gens, 0.7)
        del mqtt_items
        r = populate("mqtt", gens["mqtt"], pids, curve, {"dtls": 0}, until)
        time.sleep(3.0)
        rss1 = total_rss(pids)
        held_mqtt = int(r.get("held") or 0)
        result["mqtt"].update(held=held_mqtt, errors=r.get("errors"), connect_s=r.get("connect_s"),
                              **per_10k(rss1 - rss0, held_mqtt))  # fmt: skip
        curve.append({"mqtt": held_mqtt, "dtls": 0, "rss_mb": rss1 / 2**20})
        print(f"mqtt: {held_mqtt} held", file=sys.stderr)

        # DTLS population
        until = start("dtls", dtls_items, n_dtls_gens, 0.9)
        r = populate("dtls", gens["dtls"], pids, curve, {"mqtt": held_mqtt}, until)
        time.sleep(3.0)
        rss2 = total_rss(pids)
        held_dtls = int(r.get("held") or 0)
        result["dtls"].update(held=held_dtls, errors=r.get("errors"), connect_s=r.get("connect_s"),
                              **per_10k(rss2 - rss1, held_dtls))  # fmt: skip
        curve.append({"mqtt": held_mqtt, "dtls": held_dtls, "rss_mb": rss2 / 2**20})
        print(f"dtls: {held_dtls} held", file=sys.stderr)

        # Idle: every session held, no traffic.
        idle = max(1.0, min(args.idle_seconds, hard_deadline - time.monotonic() - 20))
        c0, w0 = total_cpu(pids), time.monotonic()
        time.sleep(idle)
        c1, w1 = total_cpu(pids), time.monotonic()
        idle_rate = (c1 - c0) / (w1 - w0)
        result["idle_seconds"] = round(w1 - w0, 1)
        result["idle_cpu_percent"] = round(idle_rate * 100, 2)
        result["broker_rss_mb_total"] = round(total_rss(pids) / 2**20, 1)
        result["broker_rss_mb_each"] = [round(rss_bytes(p) / 2**20, 1) for p in pids]
        result["sessions_per_broker"] = [live_sessions(ports["health"]) for ports in ports_of]
        for role in ("mqtt", "dtls"):
            for g in gens[role]:
                g.ask("status")
            answers = [g.answer("alive", 30) for g in gens[role]]
            result[role]["alive_after_idle"] = sum(int(a["alive"]) for a in answers if a)
        result["sessions_held"] = held_mqtt + held_dtls
        result.update(per_10k_all=per_10k(rss2 - rss0, held_mqtt + held_dtls))
        result["rss_kb_per_session_all"] = result["per_10k_all"]["rss_kb_per_session"]

        # Keep-alive cost, one transport at a time.
        if args.ping_seconds > 0:
            for role in ("mqtt", "dtls"):
                if not gens[role]:
                    continue
                left = hard_deadline - time.monotonic() - 20
                if left < args.ping_seconds + 5:
                    break
                result[role]["keepalive"] = keepalive_phase(
                    gens[role], pids, idle_rate, args.ping_seconds, time.monotonic() + left
                )
    finally:
        for g in [*gens["mqtt"], *gens["dtls"]]:
            g.stop()
        for b in brokers:
            if b.poll() is None:
                os.kill(b.pid, signal.SIGINT)
        for b in brokers:
            try:
                b.wait(60)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait()
        redis.close()
        for log in sorted(work.glob("*.log")):  # what a broker or load generator said
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            if tail:
                print(f"--- {log.name}:", *tail, sep="\n  ", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    result["curve"] = [{k: round(v, 1) for k, v in p.items()} for p in curve]
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    report(result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


def load_ca(cache: Path) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from corem_ingress import devcerts

    key = serialization.load_pem_private_key((cache / "ca.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((cache / "ca.pem").read_bytes())
    return devcerts.Issued(cert, key)  # type: ignore[arg-type]


def save_cache(
    cache: Path, url: str, ca: Any, kek: str, mqtt: list[list[str]], dtls: list[list[str]]
) -> None:
    """The provisioned devices for the next run: Redis's snapshot (dump.rdb, loaded when
    redis-server starts in that directory), the specs, the CA and the (bench-only) KEK."""
    import redis as sync_redis

    ca.write(cache / "ca.pem", cache / "ca.key")
    fd = os.open(cache / "kek", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(kek + "\n")
    (cache / "mqtt.json").write_text(json.dumps(mqtt))
    (cache / "dtls.json").write_text(json.dumps(dtls))
    try:  # a snapshot of 150,000 devices takes a while on a loaded machine
        sync_redis.Redis.from_url(url, socket_timeout=900).save()
    except sync_redis.RedisError as exc:
        print(f"the provisioned devices are not cached: {exc}", file=sys.stderr)
        return
    (cache / "done").write_text("")


def sysctls() -> dict[str, str]:
    """The kernel limits that bound a scale run (recorded with the figures)."""
    out = {}
    for name in ("net/core/somaxconn", "net/ipv4/ip_local_port_range", "fs/nr_open", "fs/file-max"):
        with contextlib.suppress(OSError):
            out[name.replace("/", ".")] = " ".join(Path("/proc/sys", name).read_text().split())
    return out


def report(result: dict[str, Any]) -> None:
    for name in ("mqtt", "dtls"):
        r = result[name]
        ka = r.get("keepalive") or {}
        print(
            f"{name:<5} held {r.get('held')}/{r['target']} in {r.get('connect_s')} s, "
            f"{r.get('rss_kb_per_session')} KB broker RSS per session "
            f"({r.get('rss_mb_per_10k')} MB per 10,000), alive after idle "
            f"{r.get('alive_after_idle')}, errors {r.get('errors')}; keep-alive: "
            f"{ka.get('answered')}/{ka.get('pinged')} answered, {ka.get('cpu_us_per_keepalive')} "
            f"us broker CPU each = {ka.get('cpu_percent_per_10k_at_60s')} % of a core per 10,000 "
            f"devices at 60 s ({ka.get('cpu_percent_per_10k_at_300s')} % at 300 s)"
        )
    print(
        f"{result['brokers']} broker process(es) "
        f"({'one shared port' if result.get('shared_ports') else 'own ports'}, sessions "
        f"{result.get('sessions_per_broker')}): RSS {result.get('broker_rss_mb_start')} MB -> "
        f"{result.get('broker_rss_mb_total')} MB; CPU at idle {result.get('idle_cpu_percent')} % "
        f"of one core over {result.get('idle_seconds')} s; whole run {result['wall_s']} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    raise SystemExit(main())
