"""PROXY protocol with a real nginx running the shipped deploy/nginx.conf (`proxy_protocol on`
for MQTT and HTTP): two ``corem-ingress serve`` nodes behind it throttle failed
authentications per real client, so one bad client no longer locks out every device
behind the load balancer (issue 12 §3, issue 22 point 4)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry
from tests.mqtt.conftest import RawClient, connect_packet
from tests.ops.brokers import Broker, lb_ports, wait_ready
from tests.ops.nginx import BEHIND_NGINX, Nginx, addresses, render

pytestmark = pytest.mark.integration

ATTACKER, NEIGHBOUR = "127.0.0.3", "127.0.0.4"
WRONG = "sk_live_" + "C" * 42 + "A"
LIMITS = {
    "COREM_LIMITS_AUTH_FAIL_MAX": "3",
    "COREM_LIMITS_AUTH_FAIL_WINDOW_S": "60",
    "COREM_LIMITS_AUTH_BLOCK_S": "300",
}


async def http_status(port: int, source: str, device_id: str, key: str) -> tuple[int, str]:
    """One uplink over the load balancer from ``source``: (status, Retry-After)."""
    body = b'{"kind":"telemetry","payload":{"n":1}}'
    raw = (
        f"POST /api/v1/devices/{device_id}/uplink HTTP/1.1\r\nHost: lb\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    retry = next(
        (h.split(":", 1)[1].strip() for h in head if h.lower().startswith("retry-after")), ""
    )
    return int(head[0].split()[1]), retry


async def mqtt_connack(port: int, source: str, ca: Path, device_id: str, key: str) -> int | None:
    """CONNACK return code over the load balancer from ``source`` (None: closed first)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=ctx, server_hostname="localhost"
        )
    except (ssl.SSLError, ConnectionError):
        return None
    client = RawClient(reader, writer)
    await client.send(connect_packet(device_id, password=key))
    packet = await client.read_packet()
    await client.close()
    return packet[3] if packet else None


async def test_nginx_proxy_protocol_throttles_per_real_client(
    brokers: Callable[..., Broker], registry: Registry, pki: dict[str, Path], tmp_path: Path
) -> None:
    env = {**BEHIND_NGINX, **LIMITS}
    a = brokers("node-a", http=True, env_extra=env)
    b = brokers("node-b", http=True, env_extra=env)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    assert a.http_port is not None and b.http_port is not None
    backends, listens = addresses({"broker-a": lb_ports(a), "broker-b": lb_ports(b)})
    (tmp_path / "lb").mkdir()
    text = render(backends, listens, tmp_path / "lb")
    assert text.count("proxy_protocol on;") == 2  # the shipped file, MQTT and HTTP
    lb = Nginx(text, tmp_path / "lb")
    lb.start(wait_port=listens[8883])
    out = await registry.provision("lbp", "SN-P", CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    device_id, key = out.device.device_id, out.api_key.api_key
    http_lb, mqtt_lb = listens[8080], listens[8883]
    try:
        # HTTP: three wrong keys from the attacker block the attacker only.
        assert (await http_status(http_lb, NEIGHBOUR, device_id, key))[0] == 202
        for _ in range(3):
            assert (await http_status(http_lb, ATTACKER, device_id, WRONG))[0] == 401
        assert await http_status(http_lb, ATTACKER, device_id, key) == (429, "300")
        assert (await http_status(http_lb, NEIGHBOUR, device_id, key))[0] == 202
        # MQTT: the same through the TCP stream with PROXY protocol (the attacker's block
        # is per address, whatever the transport, on the node it hashes to).
        assert await mqtt_connack(mqtt_lb, NEIGHBOUR, pki["ca"], device_id, key) == 0
        for _ in range(3):
            code = await mqtt_connack(mqtt_lb, "127.0.0.5", pki["ca"], device_id, WRONG)
            assert code in (4, 5)
        assert await mqtt_connack(mqtt_lb, "127.0.0.5", pki["ca"], device_id, key) in (None, 5)
        assert await mqtt_connack(mqtt_lb, NEIGHBOUR, pki["ca"], device_id, key) == 0
        # A connection from the trusted proxy's address without a header is refused
        # (required); the proxy itself is never blocked.
        for broker in (a, b):
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.mqtt_port)
            writer.write(b"\x16\x03\x01\x00\x05hello")
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(10):
                    assert await reader.read(10) == b""
            writer.close()
        logs = a.log.read_text() + b.log.read_text()
        assert "proxy_refused" in logs
        assert "127.0.0.3" in logs or "127.0.0.5" in logs  # refusals logged per real client
    finally:
        lb.stop()
