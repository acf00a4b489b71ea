"""CoAP over a DTLS Connection ID session on a real node (loopback UDP, real Redis), with
the simulator's OpenSSL device asking for a CID: an uplink, an Observe of /down, then a NAT
rebinding (a new source port, the old socket closed): the next notification reaches the
new port and the device goes on posting without a new handshake."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.dtls.cluster import REFRESH_INTERVAL_S, CidCluster
from corem_ingress.core.downlink import Downlink
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.cid_nodes import CidNodeDirectory
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.coap.conftest import coap_listener, coap_port, provision_psk, read_uplinks
from tests.coap.test_node import coap


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
        first = await coap(client, Code.POST, "up/telemetry", b'{"t": 1}')
        assert first.code == Code.CHANGED
        watch = await coap(client, Code.GET, "down", observe=0)
        assert watch.code == Code.CONTENT and watch.opt.observe is not None
        old_port = client.transport.get_extra_info("sockname")[1] if client.transport else 0

        await client.rebind()  # the NAT mapping expired: a new source port
        new_port = client.transport.get_extra_info("sockname")[1] if client.transport else 0
        assert new_port != old_port
        # The device speaks first after a rebinding (its NAT needs outbound traffic).
        again = await coap(client, Code.POST, "up/telemetry", b'{"t": 2}')
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


async def test_unknown_node_tags_cost_at_most_one_directory_read_per_interval(
    redis: Any,
) -> None:
    """A CID record with a tag no node has is one garbage datagram away: forwarding reads
    the node directory (real Redis) at most once per interval, and finds a node that joined
    since."""
    directory = CidNodeDirectory(redis, KeySchema("corem"))
    sent: list[tuple[bytes, tuple[str, int]]] = []
    now = [100.0]
    node = CidCluster(
        directory, b"\xaa\x01", lambda f, a: sent.append((f, a)), clock=lambda: now[0]
    )
    await node.start(("127.0.0.1", 5999))

    async def reads() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))

    before = await reads()
    for _ in range(200):  # garbage: random foreign tags
        node.forward(b"\x19" + bytes(40), ("127.0.0.1", 40000), os.urandom(8))
    await asyncio.sleep(0.05)
    assert await reads() - before <= 1 and sent == []
    # A node joins; once the interval passed, its records are forwarded.
    await directory.register(b"\xbb\x02", ("127.0.0.1", 6001))
    now[0] += REFRESH_INTERVAL_S
    node.forward(b"\x19" + bytes(40), ("127.0.0.1", 40000), b"\xbb\x02" + bytes(6))
    for _ in range(100):  # bounded: the directory read is one Redis round trip
        if sent:
            break
        await asyncio.sleep(0.01)
    assert [a for _f, a in sent] == [("127.0.0.1", 6001)]
    # Known now: forwarded at once, no read.
    before = await reads()
    node.forward(b"\x19" + bytes(40), ("127.0.0.1", 40000), b"\xbb\x02" + bytes(6))
    assert len(sent) == 2 and await reads() == before
    await node.stop()
