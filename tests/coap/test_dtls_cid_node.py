"""CoAP over a DTLS Connection ID session on a real node (loopback UDP, real Redis), with
the simulator's OpenSSL device asking for a CID: an uplink, an Observe of /down, then a NAT
rebinding (a new source port, the old socket closed): the next notification reaches the
new port and the device goes on posting without a new handshake."""

from __future__ import annotations

import json
import os
from typing import Any

from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress.core.downlink import Downlink
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.registry import Registry
from tests.coap.conftest import coap_listener, coap_port, provision_psk, read_uplinks

_mids = iter(range(1, 60_000))


async def request(
    client: AsyncDtlsClient, code: Code, path: str, payload: bytes = b"", **opts: Any
) -> Message:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = CON, next(_mids), os.urandom(4)
    m.opt.uri_path = tuple(path.split("/"))
    for k, v in opts.items():
        setattr(m.opt, k, v)
    client.send(m.encode())
    while True:
        resp = Message.decode(await client.recv(timeout=10))
        if resp.token == m.token:
            return resp


async def test_coap_session_with_cid_survives_a_new_source_port(
    coap_node: Any, registry: Registry, redis: Any
) -> None:
    node = await coap_node()
    server = coap_listener(node).dtls_server
    device_id, ident, key = await provision_psk(registry)
    client = await AsyncDtlsClient.connect(
        psk_context(ident.encode(), key), coap_port(node), cid=b"\x0d\x0e"
    )
    try:
        assert client.client.done and client.client.cid is not None
        first = await request(client, Code.POST, "up/telemetry", b'{"t": 1}')
        assert first.code == Code.CHANGED
        watch = await request(client, Code.GET, "down", observe=0)
        assert watch.code == Code.CONTENT and watch.opt.observe is not None
        old_port = client.transport.get_extra_info("sockname")[1] if client.transport else 0

        await client.rebind()  # the NAT mapping expired: a new source port
        new_port = client.transport.get_extra_info("sockname")[1] if client.transport else 0
        assert new_port != old_port
        # The device speaks first after a rebinding (its NAT needs outbound traffic).
        again = await request(client, Code.POST, "up/telemetry", b'{"t": 2}')
        assert again.code == Code.CHANGED
        assert server.stats["cid_address_changes"] == 1
        await node.services.downlink_publisher.publish(
            Downlink.new("acme", device_id, "ping", "hello", qos=0, now=0.0)
        )
        note = Message.decode(await client.recv(timeout=10))
        assert note.payload == b"hello" and note.opt.observe is not None
        assert server.stats["handshakes_completed"] == 1  # one session throughout
        uplinks = [u for u in await read_uplinks(redis, "acme") if u["device_id"] == device_id]
        assert [json.loads(u["payload"]) for u in uplinks] == [{"t": 1}, {"t": 2}]
    finally:
        client.close()
