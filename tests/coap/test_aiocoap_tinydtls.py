"""aiocoap with DTLSSocket (tinydtls, what constrained devices run) as a PSK client.

Finding: the tinydtls bundled in DTLSSocket 0.2.3 refuses PSKs longer than 16 bytes
("the psk was too long, for the pre master secret": it sends internal_error after its
ClientKeyExchange; DTLS_PSK_MAX_KEY_LEN is DTLS_KEY_LENGTH = 16). The platform's rule is
32 bytes; an operator with a stock-tinydtls fleet lowers ``credentials.psk_min_bytes`` to
16. These tests provision such a PSK through the real registry (a registry configured with
that minimum) and go through every real step: Redis, resolver, DTLS, CoAP, the uplink
stream, Observe, Block2. ``test_tinydtls_with_a_platform_psk_fails`` pins the limitation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiocoap
import pytest
import structlog.testing
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code

from corem_ingress.core.downlink import Downlink
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry
from tests.coap.conftest import coap_listener, coap_port, provision_psk, read_uplinks


async def _client(port: int, ident: str, key: bytes) -> Context:
    ctx = await Context.create_client_context(transports=["tinydtls"])
    ctx.client_credentials.load_from_dict(
        {
            f"coaps://127.0.0.1:{port}/*": {
                "dtls": {"psk": {"ascii": key.decode()}, "client-identity": {"ascii": ident}}
            }
        }
    )
    return ctx


async def _provision_16_byte_psk(
    redis: Any, keys: Any, keyring: Any, ident: str, key: bytes
) -> str:
    """Through the registry, as an operator with ``credentials.psk_min_bytes: 16`` would."""
    registry = Registry(
        redis, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=600, psk_min_bytes=16
    )
    res = await registry.provision(
        "acme", "tiny-hw-1", CredentialKind.PSK, actor="test", psk_identity=ident, psk_bytes=key
    )
    return res.device.device_id


async def test_tinydtls_with_a_platform_psk_fails(coap_node: Any, registry: Any) -> None:
    node = await coap_node()
    _dev, ident, key = await provision_psk(registry)  # 40 bytes: valid for the platform
    ctx = await _client(coap_port(node), ident, key)
    try:
        with structlog.testing.capture_logs() as logs:
            req = Message(code=Code.POST, uri=f"coaps://127.0.0.1:{coap_port(node)}/up/event")
            with pytest.raises((TimeoutError, aiocoap.error.Error)):
                await asyncio.wait_for(ctx.request(req).response, 8)
    finally:
        await ctx.shutdown()
    stats = coap_listener(node).dtls_server.stats
    assert stats["handshakes_completed"] == 0
    # tinydtls ends its own handshake with internal_error: no credential was judged, so
    # it is not a failed authentication and never blocks the source (issue 11.13).
    assert stats["closed:peer_aborted"] == 1, stats
    refused = [e for e in logs if e["event"] == "coap.handshake_refused"]
    assert [e["cause"] for e in refused] == ["peer_aborted"], logs
    assert "internal_error (80)" in refused[0]["detail"], refused
    assert len(node.services.access.throttle) == 0  # no failure counted for 127.0.0.1


async def test_tinydtls_psk_uplink_and_observe(
    coap_node: Any, redis: Any, keys: Any, keyring: Any
) -> None:
    node = await coap_node()
    port = coap_port(node)
    ident, key = "acme:tiny-1", secrets.token_urlsafe(12).encode()  # 16 random printable bytes
    device_id = await _provision_16_byte_psk(redis, keys, keyring, ident, key)
    ctx = await _client(port, ident, key)
    try:
        req = Message(
            code=Code.POST, uri=f"coaps://127.0.0.1:{port}/up/telemetry", payload=b'{"v":1}'
        )
        resp = await asyncio.wait_for(ctx.request(req).response, 30)
        assert resp.code == Code.CHANGED
        (entry,) = await read_uplinks(redis, "acme")
        assert entry["device_id"] == device_id and json.loads(entry["payload"]) == {"v": 1}

        obs_req = Message(code=Code.GET, uri=f"coaps://127.0.0.1:{port}/down", observe=0)
        pr = ctx.request(obs_req)
        first = await asyncio.wait_for(pr.response, 30)
        assert first.code == Code.CONTENT and first.opt.observe is not None
        publisher = node.services.downlink_publisher
        await publisher.publish(
            Downlink.new("acme", device_id, "config", {"interval": 60}, qos=1, now=0.0)
        )
        notification = await asyncio.wait_for(pr.observation.__aiter__().__anext__(), 30)
        assert json.loads(notification.payload) == {"interval": 60}
        pr.observation.cancel()

        # A large downlink goes out block-wise (Block2); aiocoap reassembles it.
        big = "x" * 3000
        await publisher.publish(Downlink.new("acme", device_id, "blob", big, qos=0, now=0.0))
        get = Message(code=Code.GET, uri=f"coaps://127.0.0.1:{port}/down", observe=0)
        pr2 = ctx.request(get)
        await asyncio.wait_for(pr2.response, 30)
        await publisher.publish(Downlink.new("acme", device_id, "blob", big, qos=1, now=0.0))
        note = await asyncio.wait_for(pr2.observation.__aiter__().__anext__(), 30)
        assert note.payload.decode() == big
        pr2.observation.cancel()
    finally:
        await ctx.shutdown()
