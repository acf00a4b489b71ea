"""Latency against offered load, as devices see it: the simulator at a few fixed rates.

    .venv/bin/python -m bench.latency [--devices 50] [--rates 2,5,10,20,40] [--seconds 8]
                                      [--transports http:api_key,mqtt:x509,coap:x509]

Loopback only; its own redis-server. One broker process (``corem-ingress serve``: HTTP, MQTT,
CoAP) pinned to CPU 0; ``corem-ingress simulate`` (one process per point) pinned to CPU 1.
For each transport and each per-device rate, ``--devices`` devices send open-loop uplinks
(HTTP POST with an API key on keep-alive connections; MQTT QoS 1 PUBLISH over mTLS; CoAP
CON POST over DTLS) for ``--seconds``; offered load = devices x rate. Reported per point:
the rate acknowledged (delivered/s) and the send -> acknowledgement latency p50/p95/p99
measured by the devices. Bounded: each simulator run has a timeout. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"


def wait_ready(health_port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    url = f"http://{HOST}:{health_port}/readyz"
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the broker exited during start")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the broker never became ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rates", default="2,5,10,20,40", help="messages/s per device")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--transports", default="http:api_key,mqtt:x509,coap:x509")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    from corem_ingress import devcerts
    from corem_ingress.core.psk import generate_kek_line
    from corem_ingress.embedded_redis import EmbeddedRedis, free_port

    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        print("needs taskset and 2 CPUs", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",") if r]
    transports = [t.split(":") for t in args.transports.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="corem-bench-latency-"))
    ca = devcerts.make_ca("latency CA")
    ca.write(work / "ca.pem", work / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(work / "server.pem", work / "server.key")
    kek = generate_kek_line("bench")
    ports = {k: free_port() for k in ("http", "mqtt", "coap", "health")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
    redis = EmbeddedRedis().start()
    env.update(
        {
            "COREM_REDIS_URL": redis.url,
            "COREM_PSK_KEK": kek,
            "COREM_STATE_DIR": str(work / "state"),
            "COREM_HEALTH_PORT": str(ports["health"]),
            "COREM_HTTP_HOST": HOST,
            "COREM_HTTP_PORT": str(ports["http"]),
            "COREM_MQTT_HOST": HOST,
            "COREM_MQTT_PORT": str(ports["mqtt"]),
            "COREM_MQTT_SERVER_CERT": str(work / "server.pem"),
            "COREM_MQTT_SERVER_KEY": str(work / "server.key"),
            "COREM_MQTT_CLIENT_CA_FILES": str(work / "ca.pem"),
            "COREM_MQTT_CLIENT_AUTH": "optional",
            "COREM_COAP_HOST": HOST,
            "COREM_COAP_PORT": str(ports["coap"]),
            "COREM_COAP_SERVER_CERT": str(work / "server.pem"),
            "COREM_COAP_SERVER_KEY": str(work / "server.key"),
            "COREM_COAP_CLIENT_CA_FILES": str(work / "ca.pem"),
            "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
            "COREM_LOGGING_LEVEL": "warning",
        }
    )
    points: list[dict[str, Any]] = []
    broker = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "broker.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        wait_ready(ports["health"], broker)
        for transport, credential in transports:
            for i, rate in enumerate(rates):
                cmd = [
                    "taskset",
                    "-c",
                    "1",
                    sys.executable,
                    "-m",
                    "corem_ingress",
                    "simulate",
                    "--transport",
                    transport,
                    "--credential",
                    credential,
                    "--devices",
                    str(args.devices),
                    "--ramp",
                    str(max(50.0, args.devices * 4.0)),
                    "--rate",
                    str(rate),
                    "--duration",
                    str(args.seconds),
                    "--tenant",
                    "latency",
                    "--server-ca",
                    str(work / "ca.pem"),
                    "--ca-cert",
                    str(work / "ca.pem"),
                    "--ca-key",
                    str(work / "ca.key"),
                    "--quiet",
                ]
                if i == 0:
                    cmd.append("--provision")
                try:
                    out = subprocess.run(
                        cmd,
                        env=env,
                        cwd=work,
                        capture_output=True,
                        timeout=args.seconds + 120,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    points.append({"transport": transport, "rate": rate, "error": "timeout"})
                    continue
                lines = out.stdout.decode().strip().splitlines()
                try:
                    s = json.loads(lines[-1])
                except (IndexError, ValueError):
                    err = out.stderr.decode().strip().splitlines()[-1:]
                    points.append({"transport": transport, "rate": rate, "error": err})
                    continue
                lat = s["send_latency_ms"]
                delivered = s["messages_delivered"]
                if transport == "http":  # its first uplink is its connect: not in the rate
                    delivered -= s["devices_connected"]
                point = {
                    "transport": transport,
                    "credential": credential,
                    "devices": args.devices,
                    "rate_per_device": rate,
                    "offered_per_s": args.devices * rate,
                    "delivered_per_s": round(s["messages_delivered"] / max(1e-9, args.seconds), 1),
                    "p50_ms": lat["p50"],
                    "p95_ms": lat["p95"],
                    "p99_ms": lat["p99"],
                    "connected": s["devices_connected"],
                    "errors": s["errors"],
                }
                points.append(point)
                print(
                    f"{transport:<5} offered {point['offered_per_s']:>7.0f}/s  delivered "
                    f"{point['delivered_per_s']:>7.0f}/s  p50 {lat['p50']} ms  "
                    f"p99 {lat['p99']} ms  errors {s['errors']}",
                    file=sys.stderr,
                )
    finally:
        if broker.poll() is None:
            os.kill(broker.pid, signal.SIGINT)
            try:
                broker.wait(30)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
        redis.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'transport':<10}{'offered/s':>10}{'delivered/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for p in points:
        if "error" in p:
            print(f"{p['transport']:<10}{'error':>10} {p['error']}")
            continue
        print(
            f"{p['transport']:<10}{p['offered_per_s']:>10.0f}{p['delivered_per_s']:>12.0f}"
            f"{p['p50_ms']!s:>9}{p['p99_ms']!s:>9}"
        )
    result = {"bench": "latency", "seconds": args.seconds, "points": points}
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
