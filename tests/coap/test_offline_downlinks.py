"""CoAP offline delivery through the device's downlink queue (issue 13 §4): libcoap's
coap-client-openssl polls ``GET /down``; aiocoap+DTLSSocket (tinydtls) observes ``/down``
again after sleeping. Real redis-server, real DTLS."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.store.downlinks import send_downlink
from tests.coap.conftest import (
    coap_listener,
    coap_port,
    provision_psk,
    psk_args,
    run_client,
    url,
)
from tests.coap.test_aiocoap_tinydtls import _client, _provision_16_byte_psk


async def send(registry: Any, device_id: str, payload: Any, **kw: Any) -> dict[str, Any]:
    return await send_downlink(
        registry,
        "acme",
        device_id,
        "config",
        payload,
        qos=kw.pop("qos", 1),
        actor="test",
        now=time.time(),
        reply_wait_s=2.0,
        **kw,
    )


async def test_get_down_returns_the_oldest_queued_then_empty(
    coap_node: Any, registry: Any, redis: Any
) -> None:
    node = await coap_node()
    device_id, ident, key = await provision_psk(registry)

    async def poll() -> str:
        res = await run_client(["-m", "get", *psk_args(ident, key), url(coap_port(node), "down")])
        assert res.rc == 0, res.stderr
        return res.stdout.strip()

    # Never seen: nothing to queue for.
    assert (await send(registry, device_id, "early"))["reason"] == "no_session"
    assert await poll() == ""  # 2.05, no payload: nothing queued; the queue exists from now
    one = await send(registry, device_id, {"n": 1})
    two = await send(registry, device_id, "two")
    assert (one["state"], one["queue_position"]) == ("queued", 1), one
    assert (two["state"], two["queue_position"]) == ("queued", 2), two
    assert (await send(registry, device_id, "q0", qos=0))["reason"] == "qos0_offline"
    assert json.loads(await poll()) == {"n": 1}
    assert await poll() == "two"
    assert await poll() == ""
    assert await redis.llen(f"corem:dlq:{{{device_id}}}") == 0


async def test_observer_that_slept_gets_the_queue_on_its_next_observe(
    coap_node: Any, redis: Any, keys: Any, keyring: Any, registry: Any
) -> None:
    node = await coap_node()
    port = coap_port(node)
    ident, key = "acme:tiny-sleep", secrets.token_urlsafe(12).encode()
    device_id = await _provision_16_byte_psk(redis, keys, keyring, ident, key)
    listener = coap_listener(node)

    async def observe(ctx: Any) -> Any:
        pr = ctx.request(Message(code=Code.GET, uri=f"coaps://127.0.0.1:{port}/down", observe=0))
        first = await asyncio.wait_for(pr.response, 30)
        assert first.code == Code.CONTENT and first.opt.observe is not None
        return pr

    async def owned() -> None:  # the Observe opened the device's session record
        async with asyncio.timeout(10):
            while not await redis.hget(f"corem:sess:{{{device_id}}}", "owner"):
                await asyncio.sleep(0.02)

    ctx = await _client(port, ident, key)
    try:
        pr = await observe(ctx)
        await owned()
        live = await send(registry, device_id, "live")  # observing: CON notification, ACKed
        note = await asyncio.wait_for(pr.observation.__aiter__().__anext__(), 30)
        assert note.payload == b"live" and live["state"] == "delivered", live
        pr.observation.cancel()
    finally:
        await ctx.shutdown()
    async with asyncio.timeout(15):  # the DTLS session ends (close_notify): the device sleeps
        while listener.sessions:
            await asyncio.sleep(0.05)
    sent = [await send(registry, device_id, f"asleep-{i}") for i in range(2)]
    assert [s["state"] for s in sent] == ["queued", "queued"], sent
    ctx = await _client(port, ident, key)
    try:
        pr = await observe(ctx)
        it = pr.observation.__aiter__()
        got = [(await asyncio.wait_for(it.__anext__(), 30)).payload for _ in range(2)]
        assert got == [b"asleep-0", b"asleep-1"]
        async with asyncio.timeout(10):  # each left the queue on its ACK
            while await redis.llen(f"corem:dlq:{{{device_id}}}"):
                await asyncio.sleep(0.05)
        pr.observation.cancel()
    finally:
        await ctx.shutdown()


async def test_a_poll_keeps_the_queue_and_pops_in_one_round_trip(redis: Any, keys: Any) -> None:
    """Issue 18: ``GET /down`` of a device with no session here opens and closes its record
    and pops the queue in one pipeline (was three round trips); same effects: the queue
    is kept for the expiry, a pending will is cancelled, expired entries are skipped and
    counted, and after a flushed script cache the record is still written (EVAL)."""
    from corem_ingress.core.downlink import Downlink
    from corem_ingress.store.device_sessions import DeviceSessions

    store = DeviceSessions(redis, keys)
    device = "dev-poll"
    now = time.time()
    executes = 0
    real_pipeline = redis.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal executes
        executes += 1
        return real_pipeline(*args, **kwargs)

    redis.pipeline = counting
    try:
        await redis.set(keys.device_will(device), "token")
        assert await store.poll(device, "n|s|poll", expiry_s=600, transport="coap", now=now) == (
            None,
            0,
        )
        assert executes == 1
        record = keys.device_session(device)
        assert await redis.hget(record, "persistent") == "1"
        assert await redis.hget(record, "owner") is None  # closed: offline between polls
        assert 590 <= await redis.ttl(record) <= 600
        assert not await redis.exists(keys.device_will(device))

        old = Downlink.new("acme", device, "config", "old", qos=1, now=now - 100, expiry_s=10)
        fresh = Downlink.new("acme", device, "config", "fresh", qos=1, now=now)
        later = Downlink.new("acme", device, "config", "later", qos=1, now=now)
        for d in (fresh, later):
            await store.enqueue(d, queue_max=10, now=now)
        await redis.lpush(keys.downlink_queue(device), old.encode())  # oldest, expired since
        assert await redis.llen(keys.downlink_queue(device)) == 3
        got, expired = await store.poll(device, "n|s|poll", expiry_s=600, transport="coap", now=now)
        assert got is not None and (got.payload, expired) == ("fresh", 1)

        await redis.script_flush()
        got, expired = await store.poll(device, "n|s|poll", expiry_s=300, transport="coap", now=now)
        assert got is not None and (got.payload, expired) == ("later", 0)
        assert await redis.hget(record, "expiry_s") == "300"  # written by the EVAL fallback
        assert 290 <= await redis.ttl(record) <= 300
    finally:
        del redis.pipeline
