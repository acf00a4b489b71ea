"""The HTTP listener's edge, on real sockets: aiohttp's own errors in our JSON shape, PROXY
protocol (hand-written v1/v2 headers), X-Forwarded-For from trusted proxies only, and
native HTTPS (TLS >= 1.2, HSTS on the admin API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corem_ingress import devcerts, metrics
from corem_ingress.adapters import http
from corem_ingress.core.proxy_protocol import v2_header

from .conftest import Api

pytestmark = pytest.mark.integration

LB = "127.0.0.1"
OUTSIDER = "127.0.0.2"
WRONG_KEY = "sk_live_" + "C" * 42 + "A"


async def exchange(
    port: int,
    raw: bytes,
    *,
    prefix: bytes = b"",
    source: str = LB,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes] | None:
    """Send ``prefix`` (a PROXY header) then one raw HTTP request (over TLS if ``tls``);
    the response as (status, headers, body), or None if the server just closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(prefix)
        await writer.drain()
        if tls is not None:
            await writer.start_tls(tls, server_hostname="localhost")
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    except (ConnectionError, ssl.SSLError):
        data = b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def uplink_request(device_id: str, key: str, extra: str = "") -> bytes:
    body = b'{"kind":"telemetry","payload":{"t":1}}'
    return (
        f"POST /api/v1/devices/{device_id}/uplink HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
        "Connection: close\r\n\r\n"
    ).encode() + body


def v2(client: str) -> bytes:
    return v2_header((client, 40000), ("127.0.0.1", 8080))


async def test_malformed_header_gets_our_json_error_without_banner_or_echo(api: Api) -> None:
    """Issue 12 §4: aiohttp's own 400 echoed the header line (token included) as text/plain
    with ``Server: Python/... aiohttp/...``."""
    token = api.tokens["acme"]
    port = int(api.base.rsplit(":", 1)[1])
    for raw in (
        f"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Bad Header\x01: {token}\r\n\r\n",
        f"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: {token}\r\n\r\n",
        f"{token} / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /" + "a" * 9000 + " HTTP/1.1\r\n\r\n",
    ):
        reply = await exchange(port, raw.encode())
        assert reply is not None
        status, headers, body = reply
        assert status == 400, body
        assert headers["content-type"].startswith("application/json")
        assert "server" not in headers
        assert json.loads(body) == {
            "error": {"code": "INVALID_ARGUMENT", "message": "malformed HTTP request"}
        }
        assert token.encode() not in body
    # Ordinary answers carry no banner either.
    reply = await api.request("GET", "/api/v1/devices", tenant="acme")
    assert "Server" not in reply.headers


@pytest.fixture
async def proxied(start_node, operator_tokens):  # type: ignore[no-untyped-def]
    async def start(**http_cfg: Any):  # type: ignore[no-untyped-def]
        path, tokens = operator_tokens
        node = await start_node(
            [http.build],
            http={"admin_tokens_file": str(path), **http_cfg},
            proxy={"trusted_cidrs": [f"{LB}/32"]},
            limits={"auth_fail_max": 3, "auth_fail_window_s": 60, "auth_block_s": 300},
        )
        listener = node.listeners[0]
        session = aiohttp.ClientSession()
        api = Api(session, f"http://127.0.0.1:{listener.port}", tokens)
        return node, listener.port, api, session

    return start


async def test_proxy_protocol_throttles_the_real_client(proxied) -> None:  # type: ignore[no-untyped-def]
    node, port, _api, session = await proxied(proxy_protocol="required")
    async with session:
        # The fixture's own client connects from the trusted proxy without a header:
        # required -> refused, so provision through a LOCAL header instead.
        assert await exchange(port, b"GET /api/v1/openapi.json HTTP/1.1\r\n\r\n") is None
        local = v2_header(None, ("0.0.0.0", 0))
        dev = await node.services.registry.provision("acme", "hw-e1", _api_key(), actor="t")
        device_id, key = dev.device.device_id, dev.api_key.api_key
        attacker, neighbour = "198.51.100.66", "203.0.113.10"
        ok = await exchange(port, uplink_request(device_id, key), prefix=v2(neighbour))
        assert ok is not None and ok[0] == 202
        for _ in range(3):
            r = await exchange(port, uplink_request(device_id, WRONG_KEY), prefix=v2(attacker))
            assert r is not None and r[0] == 401
        blocked = await exchange(port, uplink_request(device_id, key), prefix=v2(attacker))
        assert blocked is not None and blocked[0] == 429
        assert blocked[1]["retry-after"] == "300"
        # The neighbour behind the same proxy, v1 as nginx sends it, and the proxy itself.
        v1 = f"PROXY TCP4 {neighbour} 127.0.0.1 40001 8080\r\n".encode()
        for prefix in (v2(neighbour), v1, local):
            r = await exchange(port, uplink_request(device_id, key), prefix=prefix)
            assert r is not None and r[0] == 202, prefix
        # Headers that must be refused: from an outsider, and a truncated one.
        before = _refusals()
        outsider = await exchange(
            port, uplink_request(device_id, key), prefix=v2(neighbour), source=OUTSIDER
        )
        assert outsider is None
        truncated = v2(neighbour)[:14] + b"\x00\x04" + bytes(4)
        assert await exchange(port, uplink_request(device_id, key), prefix=truncated) is None
        assert _refusals() - before == 2
        # An outsider without a header is a direct client, with its own address.
        direct = await exchange(port, uplink_request(device_id, key), source=OUTSIDER)
        assert direct is not None and direct[0] == 202


async def test_forwarded_for_only_from_trusted_proxies(proxied) -> None:  # type: ignore[no-untyped-def]
    node, port, api, session = await proxied(trust_forwarded_for=True)
    async with session:
        dev = await api.provision("acme", "hw-e2")
        device_id, key = dev["device_id"], dev["api_key"]
        attacker = "X-Forwarded-For: 198.51.100.66\r\n"
        for _ in range(3):
            r = await exchange(port, uplink_request(device_id, WRONG_KEY, attacker))
            assert r is not None and r[0] == 401
        r = await exchange(port, uplink_request(device_id, key, attacker))
        assert r is not None and r[0] == 429
        # A client cannot prepend an address: the rightmost untrusted hop counts.
        spoof = "X-Forwarded-For: 203.0.113.1, 198.51.100.66\r\n"
        r = await exchange(port, uplink_request(device_id, key, spoof))
        assert r is not None and r[0] == 429
        r = await exchange(port, uplink_request(device_id, key, "X-Forwarded-For: 203.0.113.1\r\n"))
        assert r is not None and r[0] == 202
        # Malformed from the trusted proxy: 400.
        r = await exchange(port, uplink_request(device_id, key, "X-Forwarded-For: nope\r\n"))
        assert r is not None and r[0] == 400
        # From an outsider the header is ignored: it is throttled on its own address.
        fake = "X-Forwarded-For: 192.0.2.99\r\n"
        for _ in range(3):
            r = await exchange(port, uplink_request(device_id, WRONG_KEY, fake), source=OUTSIDER)
            assert r is not None and r[0] == 401
        r = await exchange(port, uplink_request(device_id, key), source=OUTSIDER)
        assert r is not None and r[0] == 429
        clock = node.services.clock()
        assert node.services.access.throttle.blocked_until(OUTSIDER, clock) is not None
        assert node.services.access.throttle.blocked_until("192.0.2.99", clock) is None


def _refusals() -> float:
    value = metrics.REGISTRY.get_sample_value("corem_proxy_refusals_total", {"transport": "http"})
    return value or 0.0


def _api_key() -> Any:
    from corem_ingress.core.identity import CredentialKind

    return CredentialKind.API_KEY


# -- HTTPS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def https_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("https")
    ca = devcerts.make_ca()
    ca.write(d / "ca.pem", d / "ca.key")
    server = devcerts.issue(ca, "localhost", server=True)
    server.write(d / "server.pem", d / "server.key")
    return d / "ca.pem", d / "server.pem", d / "server.key"


def client_context(ca: Path, **kw: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


async def test_https_tls12_and_up_with_hsts_on_the_admin_api(
    start_node: Any, operator_tokens: Any, https_pki: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = https_pki
    path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        http={
            "admin_tokens_file": str(path),
            "admin_mode": "separate",
            "tls_cert": str(cert),
            "tls_key": str(key),
        },
    )
    listener = node.listeners[0]
    device_port, admin_port = listener.port, listener.admin_port
    assert admin_port is not None
    ctx = client_context(ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        api = Api(
            session, f"https://localhost:{device_port}", tokens, f"https://localhost:{admin_port}"
        )
        dev = await api.provision("acme", "hw-tls")
        admin_reply = await api.request("GET", "/api/v1/devices", tenant="acme")
        assert admin_reply.status == 200
        assert admin_reply.headers["Strict-Transport-Security"] == "max-age=31536000"
        up = await api.uplink(dev["device_id"], dev["api_key"])
        assert up.status == 202
        assert "Strict-Transport-Security" not in up.headers  # devices do not browse
    # The server's floor is TLS 1.2 (clients here cannot even offer less); 1.2 negotiates an
    # ECDHE AEAD suite from the explicit list.
    server_ctx = listener._ssl_context
    assert server_ctx is not None and server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    _r, w = await asyncio.open_connection(
        "127.0.0.1", device_port, ssl=tls12, server_hostname="localhost"
    )
    cipher, version, _bits = w.get_extra_info("ssl_object").cipher()
    assert (
        version == "TLSv1.2"
        and cipher.startswith("ECDHE-")
        and ("GCM" in cipher or "CHACHA" in cipher)
    )
    w.close()
    # Plain HTTP to the TLS port gets no HTTP answer.
    plain = await exchange(device_port, b"GET /api/v1/openapi.json HTTP/1.1\r\n\r\n")
    assert plain is None or plain[0] != 200


async def test_https_behind_a_proxy_protocol_load_balancer(
    start_node: Any, operator_tokens: Any, https_pki: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = https_pki
    path, _tokens = operator_tokens
    node = await start_node(
        [http.build],
        http={
            "admin_tokens_file": str(path),
            "tls_cert": str(cert),
            "tls_key": str(key),
            "proxy_protocol": "required",
        },
        proxy={"trusted_cidrs": [f"{LB}/32"]},
        limits={"auth_fail_max": 2},
    )
    port = node.listeners[0].port
    dev = await node.services.registry.provision("acme", "hw-tls2", _api_key(), actor="t")
    device_id, key_ = dev.device.device_id, dev.api_key.api_key
    ctx = client_context(ca)
    for _ in range(2):
        r = await exchange(
            port, uplink_request(device_id, WRONG_KEY), prefix=v2("198.51.100.5"), tls=ctx
        )
        assert r is not None and r[0] == 401
    r = await exchange(port, uplink_request(device_id, key_), prefix=v2("198.51.100.5"), tls=ctx)
    assert r is not None and r[0] == 429
    r = await exchange(port, uplink_request(device_id, key_), prefix=v2("198.51.100.6"), tls=ctx)
    assert r is not None and r[0] == 202
