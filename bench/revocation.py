"""Revocation end to end: 3 broker processes on one Redis, live MQTT and CoAP/DTLS sessions,
revocations through the admin API, latency from the API's 200 to the close seen by the device.

    .venv/bin/python bench/revocation.py [--mqtt 500] [--coap 500] [--revoke 200]

Everything on loopback; its own redis-server; bounded in count and time. Target (issue 7):
p99 <= 100 ms. CoAP devices run tinydtls (aiocoap + DTLSSocket), which caps PSKs at 16
bytes, so the nodes run with credentials.psk_min_bytes = 16 here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from corem_ingress import devcerts, logs
from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.app import redis_client
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.embedded_redis import EmbeddedRedis, free_port
from corem_ingress.sim.coap_devices import CoapPskDevice
from corem_ingress.sim.devices import MqttDevice, Target, client_tls_context
from corem_ingress.sim.provision import SimProvisioner
from corem_ingress.sim.stats import percentile
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry

TENANT = "bench"


def start_node(
    i: int, redis_url: str, certs: Path, kek: str, tokens: str
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"http": free_port(), "mqtt": free_port(), "coap": free_port(), "health": free_port()}
    env = dict(os.environ)
    env.update(
        {
            "COREM_REDIS_URL": redis_url,
            "COREM_NODE_ID": f"bench-{i}",
            "COREM_PSK_KEK": kek,
            "COREM_HTTP_ADMIN_TOKENS": tokens,
            "COREM_HTTP_PORT": str(ports["http"]),
            "COREM_MQTT_PORT": str(ports["mqtt"]),
            "COREM_COAP_PORT": str(ports["coap"]),
            "COREM_HEALTH_PORT": str(ports["health"]),
            "COREM_MQTT_SERVER_CERT": str(certs / "server.pem"),
            "COREM_MQTT_SERVER_KEY": str(certs / "server.key"),
            "COREM_MQTT_CLIENT_CA_FILES": str(certs / "ca.pem"),
            "COREM_COAP_SERVER_CERT": str(certs / "server.pem"),
            "COREM_COAP_SERVER_KEY": str(certs / "server.key"),
            "COREM_COAP_CLIENT_CA_FILES": str(certs / "ca.pem"),
            "COREM_COAP_MAX_SESSIONS": "20000",
            "COREM_COAP_HANDSHAKE_RATE_PER_S": "10000",
            "COREM_COAP_HANDSHAKE_BURST": "10000",
            "COREM_CREDENTIALS_PSK_MIN_BYTES": "16",
            "COREM_LOGGING_LEVEL": "warning",
            "COREM_STATE_DIR": str(certs.parent / f"state-{i}"),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(certs.parent / f"node-{i}.log", "wb"),  # noqa: SIM115
    )
    return proc, ports


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("a broker node exited during start")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("a broker node never became ready")


async def connect_all(devices: list[Any], concurrency: int = 50) -> int:
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(d: Any) -> None:
        nonlocal ok
        async with sem:
            try:
                await asyncio.wait_for(d.connect(), 30)
                ok += 1
            except Exception as exc:  # counted below
                print(f"connect failed: {d.name}: {exc}", file=sys.stderr)

    await asyncio.gather(*(one(d) for d in devices))
    return ok


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt", type=int, default=500)
    ap.add_argument("--coap", type=int, default=500)
    ap.add_argument("--revoke", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    logs.configure("json", "error")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    random.seed(7)
    work = Path(tempfile.mkdtemp(prefix="corem-bench-rev-"))
    certs = work / "certs"
    certs.mkdir()
    ca = devcerts.make_ca()
    ca.write(certs / "ca.pem", certs / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(certs / "server.pem", certs / "server.key")
    kek = generate_kek_line("bench")
    token = generate_token()
    tokens = f"{TENANT}:{hash_token(token)}:bench"
    procs: list[subprocess.Popen[bytes]] = []
    devices: list[Any] = []
    with EmbeddedRedis() as server:
        client = redis_client(server.url)
        registry = Registry(
            client,
            KeySchema(),
            keyring=KeyRing.parse(kek),
            api_key_overlap=60,
            api_key_overlap_max=600,
            psk_min_bytes=16,
        )
        try:
            nodes = [start_node(i, server.url, certs, kek, tokens) for i in range(args.nodes)]
            procs = [p for p, _ in nodes]
            await asyncio.gather(*(wait_ready(ports["health"], p) for p, ports in nodes))
            mqtt_creds = await SimProvisioner(
                registry, TENANT, CredentialKind.X509, work, ca=ca
            ).ensure(args.mqtt)
            coap_creds = await SimProvisioner(registry, TENANT, CredentialKind.PSK, work).ensure(
                args.coap
            )
            kinds: list[tuple[Any, Any]] = []
            for i, c in enumerate(mqtt_creds):
                ports = nodes[i % args.nodes][1]
                tls = client_tls_context(str(certs / "ca.pem"), c.cert_path, c.key_path)
                devices.append(
                    MqttDevice(
                        c.hardware_id,
                        Target("127.0.0.1", ports["mqtt"]),
                        c.device_id,
                        tls=tls,
                        keepalive=600,
                    )
                )
                kinds.append(("mqtt", c))
            for i, c in enumerate(coap_creds):
                ports = nodes[i % args.nodes][1]
                assert c.psk_identity and c.psk_hex
                devices.append(
                    CoapPskDevice(
                        c.hardware_id,
                        Target("127.0.0.1", ports["coap"]),
                        c.psk_identity,
                        bytes.fromhex(c.psk_hex),
                    )
                )
                kinds.append(("coap", c))
            t0 = time.monotonic()
            connected = await connect_all(devices)
            connect_s = time.monotonic() - t0
            chosen = random.sample(range(len(devices)), min(args.revoke, len(devices)))
            admin = f"http://127.0.0.1:{nodes[0][1]['http']}"
            headers = {"Authorization": f"Bearer {token}"}
            latencies: dict[str, list[float]] = {"mqtt": [], "coap": []}
            from_request: list[float] = []
            not_closed = 0
            async with aiohttp.ClientSession(headers=headers) as s:
                for idx in chosen:
                    transport, c = kinds[idx]
                    if transport == "mqtt":
                        url = f"{admin}/api/v1/devices/certs/{c.credential_id}"
                    else:
                        url = f"{admin}/api/v1/devices/{c.device_id}/psk"
                    sent_at = time.time()
                    async with s.delete(url) as r:
                        await r.read()
                        ok_at = time.time()
                        if r.status != 200:
                            raise RuntimeError(f"revoke answered {r.status}")
                    d = devices[idx]
                    try:
                        await asyncio.wait_for(d.closed.wait(), 10)
                    except TimeoutError:
                        not_closed += 1
                        continue
                    latencies[transport].append((d.closed_at - ok_at) * 1000)
                    from_request.append((d.closed_at - sent_at) * 1000)
                    await asyncio.sleep(0.01)
            everything = latencies["mqtt"] + latencies["coap"]
            result = {
                "bench": "revocation",
                "nodes": args.nodes,
                "sessions": len(devices),
                "connected": connected,
                "connect_all_s": round(connect_s, 2),
                "revoked": len(chosen),
                "not_closed_within_10s": not_closed,
                "p50_ms": round(percentile(everything, 50) or 0, 2),
                "p99_ms": round(percentile(everything, 99) or 0, 2),
                "max_ms": round(max(everything, default=0), 2),
                "from_request_p50_ms": round(percentile(from_request, 50) or 0, 2),
                "from_request_p99_ms": round(percentile(from_request, 99) or 0, 2),
                "mqtt_p50_ms": round(percentile(latencies["mqtt"], 50) or 0, 2),
                "mqtt_p99_ms": round(percentile(latencies["mqtt"], 99) or 0, 2),
                "coap_p50_ms": round(percentile(latencies["coap"], 50) or 0, 2),
                "coap_p99_ms": round(percentile(latencies["coap"], 99) or 0, 2),
                "target_p99_ms": 100,
            }
        finally:
            await asyncio.gather(
                *(asyncio.wait_for(d.close(), 5) for d in devices), return_exceptions=True
            )
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
            await client.aclose()
    print(
        f"revocation end to end: {result['nodes']} nodes, {result['sessions']} sessions "
        f"({result['connected']} connected in {result['connect_all_s']} s), "
        f"{result['revoked']} revoked"
    )
    print(
        f"  API 200 -> device sees close: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms (target p99 <= 100 ms: "
        f"{'MET' if result['p99_ms'] <= 100 and not result['not_closed_within_10s'] else 'MISSED'})"
    )
    print(
        f"  (negative: the device saw the close before the API's answer reached the caller; "
        f"from the request being sent: p50 {result['from_request_p50_ms']} ms, "
        f"p99 {result['from_request_p99_ms']} ms)"
    )
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
