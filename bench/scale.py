"""Scale: hold 10,000 mTLS MQTT devices and 10,000 DTLS sessions on one broker process.

    .venv/bin/python -m bench.scale [--mqtt 10000] [--dtls 10000] [--idle-seconds 20]
                                    [--max-seconds 360] [--json-out FILE]

Loopback only; its own redis-server. The broker (``python -m corem_ingress serve``, MQTT and
CoAP listeners) runs in its own process pinned to CPU 0; the client side runs in two
load-generator processes (this file with ``--role mqtt`` / ``--role dtls``) pinned to CPU 1,
one per transport because RLIMIT_NOFILE's hard limit (20,000 here, not raisable) must cover
every socket of a process: 10,000 TLS connections + 10,000 UDP sockets would not fit in one.

* MQTT devices: the simulator's ``MqttDevice`` (MQTT 3.1.1 over TLS 1.2+, a client
  certificate per device from a bench CA, keepalive 600 s);
* DTLS sessions: the in-process pyOpenSSL DTLS 1.2 client (``corem_ingress.sim.dtls_client``),
  PSK-AES128-CCM8 with a 32-byte PSK per device, one UDP socket per session.

Measured: broker VmRSS before, while and after each population connects (RSS per session =
RSS delta / sessions held), and broker CPU (utime + stime from /proc) over ``--idle-seconds``
with every session held and no traffic. Bounded: every phase has a deadline inside
``--max-seconds``; if a population does not fully connect, the count held is reported with
the errors seen. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.procstat import cpu_seconds, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds http.py and mqtt.py: never let them shadow the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
TENANT = "scale"


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


# -- load generators (child processes) ---------------------------------------------------------
async def hold(role: str, spec: list[list[str]], port: int, ca: str, deadline_s: float) -> None:
    from corem_ingress.sim.devices import MqttDevice, Target, client_tls_context
    from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
    from corem_ingress.sim.fleet import DeviceError

    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    target = Target(HOST, port, ca)
    held: list[Any] = []
    errors: dict[str, int] = {}
    done = 0
    sem = asyncio.Semaphore(64 if role == "mqtt" else 32)
    t0 = time.monotonic()

    def alive(h: Any) -> bool:
        if role == "mqtt":
            return not h.closed.is_set()
        c = h.client
        return bool(c.done and not c.closed and c.failed is None)

    async def one(item: list[str]) -> None:
        nonlocal done
        async with sem:
            left = end - loop.time()
            cause = ""
            if left <= 1:
                cause = "deadline"
            elif role == "mqtt":
                device_id, cert, key = item
                d = MqttDevice(
                    device_id,
                    target,
                    device_id,
                    tls=client_tls_context(ca, cert, key),
                    keepalive=600,
                )
                try:
                    await asyncio.wait_for(d.connect(), min(30, left))
                    held.append(d)
                except DeviceError as exc:
                    cause = exc.cause
                except TimeoutError:
                    cause = "timeout"
            else:
                identity, psk_hex = item
                ctx = psk_context(identity.encode(), bytes.fromhex(psk_hex))
                try:
                    c = await AsyncDtlsClient.connect(ctx, port, timeout=min(30, left))
                except TimeoutError:
                    cause = "timeout"
                except OSError as exc:
                    cause = exc.__class__.__name__
                else:
                    if c.client.done:
                        held.append(c)
                    else:
                        cause = "handshake_failed"
                        c.close()
            if cause:
                errors[cause] = errors.get(cause, 0) + 1
            done += 1
            if done % 500 == 0:
                emit({"progress": done, "held": len(held)})

    await asyncio.gather(*(one(item) for item in spec))
    emit(
        {
            "done": True,
            "held": len(held),
            "errors": errors,
            "connect_s": round(time.monotonic() - t0, 2),
        }
    )
    # Hold until stdin closes; "status" asks how many sessions are still up.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"status":
            emit({"alive": sum(1 for h in held if alive(h))})
    os._exit(0)  # the sessions end with the process; no 10,000 orderly closes needed


def loadgen_main(args: argparse.Namespace) -> None:
    from corem_ingress import logs

    logs.configure("json", "error")
    raise_nofile()
    spec = json.loads(Path(args.spec).read_text())
    asyncio.run(hold(args.role, spec, args.port, args.ca, args.deadline))


# -- orchestrator ------------------------------------------------------------------------------
class LoadGen:
    def __init__(self, role: str, spec: Path, port: int, ca: Path, deadline: float) -> None:
        self.proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "bench.scale",
                "--role",
                role,
                "--spec",
                str(spec),
                "--port",
                str(port),
                "--ca",
                str(ca),
                "--deadline",
                str(deadline),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
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

    def status(self, timeout: float = 20) -> int | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"status\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            line = self.next_line(left)
            if line is None or line.get("exited"):
                return None
            if "alive" in line:
                return int(line["alive"])
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


async def provision(
    url: str, kek: str, work: Path, ca: Any, n_mqtt: int, n_dtls: int
) -> tuple[list[list[str]], list[list[str]]]:
    from corem_ingress import devcerts
    from corem_ingress.app import redis_client
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.core.psk import KeyRing
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry

    client = redis_client(url)
    registry = Registry(
        client,
        KeySchema(),
        keyring=KeyRing.parse(kek),
        api_key_overlap=60,
        api_key_overlap_max=3600,
    )
    sem = asyncio.Semaphore(64)
    certs = work / "dev"
    certs.mkdir()
    await registry.add_ca(TENANT, ca.cert_pem, actor="bench")  # the tenant's trust anchor

    async def x509(i: int) -> list[str]:
        async with sem:  # the certificate is made here too: never block the loop for long
            leaf = devcerts.issue(ca, f"scale-mqtt-{i}")
            cert, key = certs / f"{i}.pem", certs / f"{i}.key"
            leaf.write(cert, key)
            r = await registry.provision(
                TENANT,
                f"scale-mqtt-{i}",
                CredentialKind.X509,
                actor="bench",
                cert_pem=leaf.cert_pem,
            )
        return [r.device.device_id, str(cert), str(key)]

    async def psk(i: int) -> list[str]:
        async with sem:
            r = await registry.provision(
                TENANT, f"scale-dtls-{i}", CredentialKind.PSK, actor="bench"
            )
        assert r.psk is not None
        return [r.psk.psk_identity, r.psk.psk.hex()]

    try:
        mqtt = await asyncio.gather(*(x509(i) for i in range(n_mqtt)))
        dtls = await asyncio.gather(*(psk(i) for i in range(n_dtls)))
    finally:
        await client.aclose()
    return list(mqtt), list(dtls)


def wait_ready(health_port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the broker exited during start")
        url = f"http://{HOST}:{health_port}/readyz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the broker never became ready")


def populate(
    name: str,
    gen: LoadGen,
    broker_pid: int,
    curve: list[dict[str, Any]],
    base: dict[str, int],
    deadline: float,
) -> dict[str, Any]:
    """Follow one load generator until it has connected its population (or the deadline)."""
    while (left := deadline - time.monotonic()) > 0:
        line = gen.next_line(left)
        if line is None or line.get("exited"):
            return {"held": 0, "errors": {"loadgen": 1}, "connect_s": None}
        if "progress" in line:
            curve.append({**base, name: int(line["held"]), "rss_mb": rss_bytes(broker_pid) / 2**20})
        if line.get("done"):
            return line
    return {"held": None, "errors": {"deadline": 1}, "connect_s": None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mqtt", type=int, default=10_000)
    ap.add_argument("--dtls", type=int, default=10_000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=360.0, help="bound on the whole run")
    ap.add_argument("--json-out")
    ap.add_argument("--role", choices=["mqtt", "dtls"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=120.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        loadgen_main(args)
        return 0

    from corem_ingress import devcerts
    from corem_ingress.core.psk import generate_kek_line
    from corem_ingress.embedded_redis import EmbeddedRedis, free_port

    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        print("needs taskset and 2 CPUs", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    hard_deadline = t_start + args.max_seconds
    nofile = raise_nofile()  # the broker inherits it
    work = Path(tempfile.mkdtemp(prefix="corem-bench-scale-"))
    ca = devcerts.make_ca("scale CA")
    ca.write(work / "ca.pem", work / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(work / "server.pem", work / "server.key")
    kek = generate_kek_line("bench")
    result: dict[str, Any] = {
        "bench": "scale",
        "cpus": os.cpu_count(),
        "nofile_limit": nofile,
        "mqtt": {"target": args.mqtt},
        "dtls": {"target": args.dtls},
    }
    curve: list[dict[str, Any]] = []
    redis = EmbeddedRedis().start()
    broker: subprocess.Popen[bytes] | None = None
    gens: list[LoadGen] = []
    try:
        t0 = time.monotonic()
        mqtt_spec, dtls_spec = asyncio.run(
            provision(redis.url, kek, work, ca, args.mqtt, args.dtls)
        )
        result["provision_s"] = round(time.monotonic() - t0, 1)
        print(
            f"provisioned {args.mqtt} + {args.dtls} devices in {result['provision_s']} s",
            file=sys.stderr,
        )
        (work / "mqtt.json").write_text(json.dumps(mqtt_spec))
        (work / "dtls.json").write_text(json.dumps(dtls_spec))
        ports = {"mqtt": free_port(), "coap": free_port(), "health": free_port()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
        env.update(
            {
                "COREM_REDIS_URL": redis.url,
                "COREM_PSK_KEK": kek,
                "COREM_HTTP_ENABLED": "0",
                "COREM_HEALTH_PORT": str(ports["health"]),
                "COREM_MQTT_HOST": HOST,
                "COREM_MQTT_PORT": str(ports["mqtt"]),
                "COREM_MQTT_SERVER_CERT": str(work / "server.pem"),
                "COREM_MQTT_SERVER_KEY": str(work / "server.key"),
                "COREM_MQTT_CLIENT_CA_FILES": str(work / "ca.pem"),
                "COREM_COAP_HOST": HOST,
                "COREM_COAP_PORT": str(ports["coap"]),
                "COREM_COAP_SERVER_CERT": str(work / "server.pem"),
                "COREM_COAP_SERVER_KEY": str(work / "server.key"),
                "COREM_COAP_CLIENT_CA_FILES": str(work / "ca.pem"),
                "COREM_COAP_MAX_SESSIONS": str(args.dtls + 1000),
                "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
                "COREM_COAP_IDLE_TIMEOUT_S": "3600",
                "COREM_LOGGING_LEVEL": "warning",
                "COREM_STATE_DIR": str(work / "state"),
            }
        )
        broker = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "corem_ingress", "serve"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "broker.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        wait_ready(ports["health"], broker)
        time.sleep(2.0)
        rss0 = rss_bytes(broker.pid)
        result["broker_rss_mb_start"] = round(rss0 / 2**20, 1)
        curve.append({"mqtt": 0, "dtls": 0, "rss_mb": rss0 / 2**20})
        reserve = args.idle_seconds + 30  # keep time for the idle window and the teardown

        # MQTT population
        left = hard_deadline - time.monotonic() - reserve
        gen = LoadGen("mqtt", work / "mqtt.json", ports["mqtt"], work / "ca.pem", left * 0.55)
        gens.append(gen)
        r = populate("mqtt", gen, broker.pid, curve, {"dtls": 0}, time.monotonic() + left * 0.6)
        time.sleep(2.0)
        rss1 = rss_bytes(broker.pid)
        held_mqtt = int(r.get("held") or 0)
        result["mqtt"].update(
            held=held_mqtt,
            errors=r.get("errors"),
            connect_s=r.get("connect_s"),
            rss_kb_per_session=round((rss1 - rss0) / held_mqtt / 1024, 2) if held_mqtt else None,
        )
        curve.append({"mqtt": held_mqtt, "dtls": 0, "rss_mb": rss1 / 2**20})

        # DTLS population
        left = hard_deadline - time.monotonic() - reserve
        gen = LoadGen("dtls", work / "dtls.json", ports["coap"], work / "ca.pem", left * 0.9)
        gens.append(gen)
        r = populate(
            "dtls", gen, broker.pid, curve, {"mqtt": held_mqtt}, time.monotonic() + left * 0.95
        )
        time.sleep(2.0)
        rss2 = rss_bytes(broker.pid)
        held_dtls = int(r.get("held") or 0)
        result["dtls"].update(
            held=held_dtls,
            errors=r.get("errors"),
            connect_s=r.get("connect_s"),
            rss_kb_per_session=round((rss2 - rss1) / held_dtls / 1024, 2) if held_dtls else None,
        )
        curve.append({"mqtt": held_mqtt, "dtls": held_dtls, "rss_mb": rss2 / 2**20})

        # Idle: every session held, no traffic.
        idle = max(1.0, min(args.idle_seconds, hard_deadline - time.monotonic() - 20))
        c0, w0 = cpu_seconds(broker.pid), time.monotonic()
        time.sleep(idle)
        c1, w1 = cpu_seconds(broker.pid), time.monotonic()
        result["idle_seconds"] = round(w1 - w0, 1)
        result["idle_cpu_percent"] = round((c1 - c0) / (w1 - w0) * 100, 2)
        result["broker_rss_mb_total"] = round(rss_bytes(broker.pid) / 2**20, 1)
        result["mqtt"]["alive_after_idle"] = gens[0].status()
        result["dtls"]["alive_after_idle"] = gens[1].status()
        result["sessions_held"] = held_mqtt + held_dtls
        result["rss_kb_per_session_all"] = (
            round((rss2 - rss0) / (held_mqtt + held_dtls) / 1024, 2)
            if held_mqtt + held_dtls
            else None
        )
    finally:
        for g in gens:
            g.stop()
        if broker is not None and broker.poll() is None:
            os.kill(broker.pid, signal.SIGINT)
            try:
                broker.wait(30)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
        redis.close()
        shutil.rmtree(work, ignore_errors=True)
    result["curve"] = [{k: round(v, 1) for k, v in p.items()} for p in curve]
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    for name in ("mqtt", "dtls"):
        r = result[name]
        print(
            f"{name:<5} held {r.get('held')}/{r['target']} in {r.get('connect_s')} s, "
            f"{r.get('rss_kb_per_session')} KB broker RSS per session, "
            f"alive after idle {r.get('alive_after_idle')}, errors {r.get('errors')}"
        )
    print(
        f"broker RSS {result.get('broker_rss_mb_start')} MB -> {result.get('broker_rss_mb_total')}"
        f" MB; CPU at idle {result.get('idle_cpu_percent')} % of one core over "
        f"{result.get('idle_seconds')} s; whole run {result['wall_s']} s"
    )
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
