"""Graceful shutdown of the CoAP listener: what a device sent is finished (2.04 only after the
append), new requests meanwhile get 5.03 with Max-Age, then every session gets close_notify."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from tests.coap.conftest import coap_listener, coap_port, provision_psk, read_uplinks


def request(path: str, payload: bytes, mid: int) -> Message:
    m = Message(code=Code.POST, payload=payload)
    m.mtype, m.mid, m.token = CON, mid, os.urandom(4)
    m.opt.uri_path = tuple(path.split("/"))
    return m


async def answer(client: AsyncDtlsClient, token: bytes) -> Message:
    while True:
        resp = Message.decode(await client.recv(timeout=20))
        if resp.token == token:
            return resp


async def test_stop_finishes_in_flight_uplinks_refuses_new_ones_then_closes(
    coap_node: Any, registry: Any, redis: Any
) -> None:
    node = await coap_node()
    listener = coap_listener(node)
    _dev, ident, key = await provision_psk(registry)
    client = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
    # Redis holds every write for up to 20 s: the uplink's append waits there, for real.
    await redis.client_pause(20_000, all=False)
    try:
        first = request("up/telemetry", b'{"n":1}', 1)
        client.send(first.encode())
        for _ in range(500):  # bounded: until the request is being handled (append pending)
            if listener.endpoint.stats.get("requests", 0) or any(
                s.tasks for s in listener.endpoint._peers.values()
            ):
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(listener.stop(20.0))
        for _ in range(500):
            if listener.endpoint.draining:
                break
            await asyncio.sleep(0.01)
        second = request("up/telemetry", b'{"n":2}', 2)
        client.send(second.encode())
        refused = await answer(client, second.token)
        assert refused.code == Code.SERVICE_UNAVAILABLE and refused.opt.max_age is not None
        assert not stopping.done()  # still waiting for the first request's append
    finally:
        await redis.client_unpause()
    done = await answer(client, first.token)
    assert done.code == Code.CHANGED  # acknowledged only now that Redis took it
    await asyncio.wait_for(stopping, 20)
    await client.wait_closed(timeout=10)  # then close_notify
    entries = await read_uplinks(redis, "acme")
    assert [e["payload"] for e in entries] == ['{"n":1}']
