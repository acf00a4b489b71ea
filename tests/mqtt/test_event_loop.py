"""`corem-ingress serve` on uvloop (``event_loop``): MQTT and HTTP uplinks work, the log says so.

uvloop's TCP transport is not an ``asyncio.Transport`` subclass: the MQTT protocol and the
HTTP edge site asserted it was, and every connection failed on it (issue 18).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from corem_ingress import event_loop
from corem_ingress.config import Config, ConfigError
from corem_ingress.embedded_redis import free_port
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.mqtt.conftest import MOSQUITTO_PUB, Pki, provision_key, provision_x509, run, tls_args

needs_uvloop = pytest.mark.skipif(not event_loop.uvloop_installed(), reason="uvloop missing")


def test_loop_choice() -> None:
    assert event_loop.loop_factory("asyncio") is None
    if event_loop.uvloop_installed():
        assert event_loop.loop_factory("auto") is not None
    else:
        assert event_loop.loop_factory("auto") is None
        with pytest.raises(event_loop.EventLoopUnavailable):
            event_loop.loop_factory("uvloop")
    cfg = Config()
    cfg.event_loop = "trio"
    with pytest.raises(ConfigError, match="event_loop"):
        cfg.validate()


def _serve(
    tmp_path: Path, redis_url: str, pki: Pki, loop: str
) -> tuple[subprocess.Popen[str], int, int, int]:
    mqtt_port, http_port, health_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COREM_")},
        "COREM_PSK_KEK": os.environ.get("COREM_PSK_KEK", ""),
        "COREM_EVENT_LOOP": loop,
        "COREM_REDIS_URL": redis_url,
        "COREM_STATE_DIR": str(tmp_path / "state"),
        "COREM_LOGGING_FORMAT": "json",
        "COREM_HEALTH_PORT": str(health_port),
        "COREM_HTTP_PORT": str(http_port),
        "COREM_HTTP_ADMIN_MODE": "off",
        "COREM_COAP_ENABLED": "false",
        "COREM_MQTT_PORT": str(mqtt_port),
        "COREM_MQTT_SERVER_CERT": str(pki.server_cert),
        "COREM_MQTT_SERVER_KEY": str(pki.server_key),
        "COREM_MQTT_CLIENT_CA_FILES": str(pki.ca_file),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:  # listening once both listeners accept
            for port in (mqtt_port, http_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, mqtt_port, http_port, health_port


def _status(req: urllib.request.Request) -> int:
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


@needs_uvloop
async def test_uplinks_on_uvloop(
    tmp_path: Path,
    redis: aioredis.Redis,
    redis_url: str,
    registry: Registry,
    pki: Pki,
    kek_env: str,
) -> None:
    mqtt_dev = await provision_x509(registry, pki, "loop", "hw-mqtt")
    http_dev = await provision_key(registry, "loop", "hw-http")
    proc, mqtt_port, http_port, _ = _serve(tmp_path, redis_url, pki, "uvloop")
    try:
        topic = f"devices/{mqtt_dev.device_id}/up/telemetry"
        cmd = [MOSQUITTO_PUB, *tls_args(pki, mqtt_dev), "-p", str(mqtt_port)]
        code, out = await run([*cmd, "-i", mqtt_dev.device_id, "-q", "1", "-t", topic, "-m", "{}"])
        assert code == 0, out
        assert http_dev.api_key is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/api/v1/devices/{http_dev.device_id}/uplink",
            data=json.dumps({"kind": "event", "payload": {"x": 1}}).encode(),
            headers={"X-API-Key": http_dev.api_key, "Content-Type": "application/json"},
            method="POST",
        )
        assert await asyncio.to_thread(_status, req) == 202
        entries = await redis.xrange(KeySchema("corem").uplink_stream("loop"))
        assert sorted(f["transport"] for _id, f in entries) == ["http", "mqtt"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    started = [json.loads(line) for line in out.splitlines() if '"node.started"' in line]
    assert started and started[0]["event_loop"] == "uvloop"
    assert "Traceback" not in out
