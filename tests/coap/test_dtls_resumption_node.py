"""A resumed DTLS session on a real node (loopback UDP, real Redis) with the simulator's
OpenSSL device resuming by ``set_session``: no OpenSSL object on the server side, our
record layer carries CoAP requests, an Observe notification, and revocation closes it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.dtls import _binding
from corem_ingress.core.downlink import Downlink
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.registry import Registry
from tests.coap.conftest import coap_listener, coap_port, provision_psk, read_uplinks
from tests.coap.test_node import _until, coap


async def test_a_resumed_session_carries_coap_and_is_closed_by_revocation(
    coap_node: Any, registry: Registry, redis: Any
) -> None:
    node = await coap_node()
    server = coap_listener(node).dtls_server
    device_id, ident, key = await provision_psk(registry)
    ctx = psk_context(ident.encode(), key)

    async def stored() -> int:
        return len([k async for k in redis.scan_iter(match="{corem}:dtls:resume:s:*")])

    before = await stored()
    first = await AsyncDtlsClient.connect(ctx, coap_port(node))
    assert first.client.done
    assert (await coap(first, Code.POST, "up/telemetry", b'{"t": 1}')).code == Code.CHANGED
    session = first.client.conn.get_session()
    first.close()  # close_notify: the device reboots
    for _ in range(300):  # bounded: until the node stored the session
        if await stored() > before:
            break
        await asyncio.sleep(0.01)
    again = await AsyncDtlsClient.connect(ctx, coap_port(node), session=session)
    try:
        assert again.client.done and _binding.session_reused(again.client.conn)
        # The client is done once it sent its Finished; the server once it verified it.
        await _until(lambda: server.stats["resumptions_resumed"] == 1, "the resumption")
        assert server.stats["handshakes_completed"] == 2 and server.stats["sessions_issued"] == 1
        reply = await coap(again, Code.POST, "up/telemetry", b'{"t": 2}')
        assert reply.code == Code.CHANGED
        watch = await coap(again, Code.GET, "down", observe=0)
        assert watch.code == Code.CONTENT and watch.opt.observe is not None
        await node.services.downlink_publisher.publish(
            Downlink.new("acme", device_id, "ping", "hello", qos=0, now=0.0)
        )
        note = Message.decode(await again.recv(timeout=10))
        assert note.payload == b"hello"
        uplinks = [u for u in await read_uplinks(redis, "acme") if u["device_id"] == device_id]
        assert [json.loads(u["payload"]) for u in uplinks] == [{"t": 1}, {"t": 2}]
        await registry.revoke_psk("acme", device_id, actor="test")
        await again.wait_closed()
        assert again.client.closed  # our close_notify, on our record layer
        assert server.stats["closed:credential_revoked"] == 1 and len(server) == 0
    finally:
        again.close()
