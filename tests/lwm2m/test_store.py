"""Registrations in a real Redis (TTL expiry, device index) and request routing between two
nodes, each with its own Redis client. Integration: uses the redis-server fixture."""

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from corem_ingress.app import redis_client
from corem_ingress.core.errors import NotFound, Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.content import Record
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.registration import (
    Peer,
    Registrar,
    Registration,
    RegistrationConfig,
    parse_request,
)
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import (
    Lwm2mRequestServer,
    Lwm2mRouter,
    Lwm2mStore,
    RoutedRequest,
    decode_reply,
    encode_reply,
)

pytestmark = pytest.mark.integration

DEV = "0b7c6f62-3f0e-4c39-9a55-6a1f0f1b2c3d"
HW = "SN-0001"
OBJECTS = b'</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303/0>;ver=1.1'


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def peer(node: str = "node-a") -> Peer:
    return Peer(DeviceIdentity("acme", DEV, CredentialKind.PSK, "psk_1"), HW, node, f"{node}-s1")


def register(registrar: Registrar, now: float, lt: int = 300, node: str = "node-a") -> Registration:
    req = parse_request("POST", ["rd"], [f"ep={HW}", f"lt={lt}", "lwm2m=1.1"], 40, OBJECTS)
    out = registrar.handle(req, peer(node), None, now=now)
    assert out.save is not None
    return out.save


async def test_put_get_and_ttl(redis: aioredis.Redis, keys: KeySchema) -> None:
    clock = Clock()
    store = Lwm2mStore(redis, keys, grace_s=30, clock=clock)
    reg = register(Registrar(), clock.now)
    await store.put(reg)
    assert await store.get(reg.registration_id) == reg
    assert await store.get_by_device(DEV) == reg
    ttl = await redis.ttl(keys.lwm2m_registration(reg.registration_id))
    assert 325 <= ttl <= 330
    assert 325 <= await redis.ttl(keys.lwm2m_device(DEV)) <= 330
    assert await store.get("missing") is None and await store.get_by_device("other") is None


async def test_past_its_lifetime_a_registration_is_hidden_then_expired_by_redis(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    clock = Clock()
    store = Lwm2mStore(redis, keys, grace_s=1, clock=clock)
    reg = register(Registrar(), clock.now, lt=1)
    await store.put(reg)
    clock.now += 1.5  # past the lifetime, within the grace: hidden from reads
    assert await store.get_by_device(DEV) is None
    assert await store.get_by_device(DEV, include_expired=True) == reg
    # Redis removes it on its own (TTL = 1 s lifetime + 1 s grace), with no node involved.
    for _ in range(40):
        if not await redis.exists(keys.lwm2m_registration(reg.registration_id)):
            break
        await asyncio.sleep(0.1)
    assert not await redis.exists(
        keys.lwm2m_registration(reg.registration_id), keys.lwm2m_device(DEV)
    )


async def test_register_update_deregister_flow(redis: aioredis.Redis, keys: KeySchema) -> None:
    clock = Clock()
    store = Lwm2mStore(redis, keys, clock=clock)
    registrar = Registrar(RegistrationConfig())
    first = register(registrar, clock.now)
    await store.put(first)
    # The device registers again (e.g. after a reboot): the old registration is replaced.
    existing = await store.get_by_device(DEV)
    req = parse_request("POST", ["rd"], [f"ep={HW}", "lt=300", "lwm2m=1.1"], 40, OBJECTS)
    out = registrar.handle(req, peer(), existing, now=clock.now)
    assert out.save is not None and out.delete == first
    await store.apply(out)
    second = out.save
    assert await store.get(first.registration_id) is None
    assert await store.get_by_device(DEV) == second
    # Update arrives over a new DTLS session on node B: the holder moves, the lifetime restarts.
    clock.now += 100
    upd = parse_request("POST", ["rd", second.registration_id], ["lt=600"], None, b"")
    current = await store.get(second.registration_id)
    out = registrar.handle(upd, peer("node-b"), current, now=clock.now)
    assert out.save is not None
    await store.apply(out)
    stored = await store.get_by_device(DEV)
    assert stored is not None and stored.node_id == "node-b" and stored.lifetime_s == 600
    assert 625 <= await redis.ttl(keys.lwm2m_registration(second.registration_id)) <= 630
    # Unknown id on update: nothing found, 4.04, nothing stored.
    bogus = parse_request("POST", ["rd", "nope"], [], None, b"")
    with pytest.raises(NotFound):
        registrar.handle(bogus, peer(), await store.get("nope"), now=clock.now)
    # De-register.
    dereg = parse_request("DELETE", ["rd", second.registration_id], [], None, b"")
    out = registrar.handle(dereg, peer(), await store.get(second.registration_id), now=clock.now)
    assert out.delete is not None and out.save is None
    await store.apply(out)
    assert await store.get_by_device(DEV) is None
    assert await redis.keys("*lwm2m*") == []


async def test_deleting_an_old_registration_keeps_the_devices_newer_one(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    clock = Clock()
    store = Lwm2mStore(redis, keys, clock=clock)
    gen = iter(["a1", "a2"])
    registrar = Registrar(new_id=lambda: next(gen))
    old, new = register(registrar, clock.now), register(registrar, clock.now)
    await store.put(old)
    await store.put(new)
    await store.delete(old)
    assert await store.get_by_device(DEV) == new
    # Revoking another credential of the device leaves a registration made with psk_1 alone.
    assert await store.delete_device(DEV, credential_id="psk_other") is None
    assert await store.get_by_device(DEV) == new
    assert await store.delete_device(DEV, credential_id="psk_1") == new
    assert await store.get_by_device(DEV) is None
    assert await store.delete_device(DEV) is None


async def test_storage_down_is_unavailable(keys: KeySchema) -> None:
    dead = redis_client("redis://127.0.0.1:1", socket_timeout=0.5)
    try:
        store = Lwm2mStore(dead, keys)
        with pytest.raises(Unavailable):
            await store.get_by_device(DEV)
        with pytest.raises(Unavailable):
            await store.put(register(Registrar(), time.time()))
        with pytest.raises(Unavailable):
            await Lwm2mRouter(dead, keys).call(
                register(Registrar(), time.time()), ops.read("/3/0"), timeout_s=0.5
            )
    finally:
        await dead.aclose()


# -- routing between two nodes ---------------------------------------------------------------


@pytest.fixture
async def node_b(redis_url: str, redis: aioredis.Redis) -> aioredis.Redis:
    """A second client: another broker node's own connection to the same Redis."""
    client = redis_client(redis_url)
    yield client  # type: ignore[misc]
    await client.aclose()


async def test_request_routed_to_the_node_holding_the_session(
    redis: aioredis.Redis, node_b: aioredis.Redis, keys: KeySchema
) -> None:
    device = SimulatedClient(HW, clock=time.time)
    seen: list[RoutedRequest] = []

    async def over_dtls(routed: RoutedRequest) -> ops.DeviceResponse:
        """What node A's CoAP glue does: send over the device's session, return its answer."""
        seen.append(routed)
        req = routed.request
        r = device.handle(req.method, req.uri_path, uri_query=req.uri_query,
                          content_format=req.content_format, accept=req.accept,
                          payload=req.payload)  # fmt: skip
        return ops.DeviceResponse(r.code, r.content_format, r.payload)

    server = Lwm2mRequestServer(redis, keys, "node-a", over_dtls)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop, block_ms=100))
    try:
        reg = register(Registrar(), time.time())  # held by node-a
        router = Lwm2mRouter(node_b, keys)  # the admin API on node B
        read = ops.read("/3303/0/5700")
        resp = await router.call(reg, read, timeout_s=5)
        result = ops.interpret(read, resp, now=time.time())
        assert result.records == (Record(Lwm2mPath.parse("/3303/0/5700"), ValueType.FLOAT, 21.5),)
        assert seen[0].device_id == DEV and seen[0].registration_id == reg.registration_id
        # A write and an execute travel the same way.
        write = ops.write("/1/0/1", [Record(Lwm2mPath.parse("/1/0/1"), ValueType.INTEGER, 90)])
        assert (await router.call(reg, write, timeout_s=5)).code == "2.04"
        assert device.lifetime_s == 90
        resp = await router.call(reg, ops.read("/3/0/77"), timeout_s=5)
        with pytest.raises(NotFound):
            ops.interpret(ops.read("/3/0/77"), resp, now=time.time())
        # Concurrent calls each get their own reply.
        paths = ["/3/0/0", "/3/0/2", "/3303/0/5701", "/1/0/1"]
        answers = await asyncio.gather(*(router.call(reg, ops.read(p), timeout_s=5) for p in paths))
        values = [ops.interpret(ops.read(p), a, now=0).records[0].value
                  for p, a in zip(paths, answers, strict=True)]  # fmt: skip
        assert values == ["CORE-M", HW, "Cel", 90]
        assert await redis.keys(keys.lwm2m_reply("*")) == []  # replies consumed
    finally:
        stop.set()
        await task


async def test_errors_travel_back_and_a_missing_node_times_out(
    redis: aioredis.Redis, node_b: aioredis.Redis, keys: KeySchema
) -> None:
    async def no_session(routed: RoutedRequest) -> ops.DeviceResponse:
        raise NotFound("no DTLS session for this device on this node")

    server = Lwm2mRequestServer(redis, keys, "node-a", no_session)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop, block_ms=100))
    try:
        reg = register(Registrar(), time.time())
        router = Lwm2mRouter(node_b, keys)
        with pytest.raises(NotFound, match="no DTLS session"):
            await router.call(reg, ops.read("/3/0"), timeout_s=5)
        # The registration names a node that is not serving: the caller gets a timeout.
        ghost = register(Registrar(), time.time(), node="node-gone")
        start = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer"):
            await router.call(ghost, ops.read("/3/0"), timeout_s=0.4)
        assert time.monotonic() - start < 2
        assert await node_b.xlen(keys.lwm2m_requests("node-gone")) == 1
    finally:
        stop.set()
        await task


async def test_slow_device_times_out_and_late_requests_are_dropped(
    redis: aioredis.Redis, node_b: aioredis.Redis, keys: KeySchema
) -> None:
    release = asyncio.Event()

    async def slow(routed: RoutedRequest) -> ops.DeviceResponse:
        await release.wait()
        return ops.DeviceResponse("2.05", 0, b"x")

    server = Lwm2mRequestServer(redis, keys, "node-a", slow)
    reg = register(Registrar(), time.time())
    router = Lwm2mRouter(node_b, keys)
    await server.start_position()
    # Sent while node A is not polling; past its deadline when node A reads it: dropped.
    with pytest.raises(Unavailable):
        await router.call(reg, ops.read("/3/0"), timeout_s=0.2)
    assert await server.poll(block_ms=100) == 1
    assert server.dropped == 1
    # A device slower than the caller's timeout: the caller gives up; the holder does too.
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop, block_ms=100))
    try:
        with pytest.raises(Unavailable, match="did not answer"):
            await router.call(reg, ops.read("/3/0"), timeout_s=0.3)
    finally:
        release.set()
        stop.set()
        await task
    assert server.handled == 0


def test_reply_encoding() -> None:
    resp = ops.DeviceResponse("2.05", 0, b"21.5")
    assert decode_reply(encode_reply(resp)) == resp
    with pytest.raises(NotFound):
        decode_reply(encode_reply(NotFound("gone")))
    with pytest.raises(Unavailable):
        decode_reply('{"error": {"code": "WHAT", "message": "x"}}')
    with pytest.raises(Unavailable):
        decode_reply("not json")


async def test_a_registration_whose_session_ended_shows_unreachable(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    """Issue 11.11: one script flips ``reachable`` if the registration is still bound to the
    session that ended; the TTL and the rest of the record stay; an Update wins."""
    clock = Clock()
    store = Lwm2mStore(redis, keys, grace_s=30, clock=clock)
    registrar = Registrar()
    reg = register(registrar, clock.now)
    await store.put(reg)
    key = keys.lwm2m_registration(reg.registration_id)
    assert not await store.set_unreachable(reg.registration_id, "another-session")
    assert (await store.get(reg.registration_id)) == reg
    assert await store.set_unreachable(reg.registration_id, reg.session_id)
    stored = await store.get(reg.registration_id)
    assert stored is not None and stored.reachable is False
    assert stored == Registration.from_json({**reg.to_json(), "reachable": False})
    assert 325 <= await redis.ttl(key) <= 330
    assert not await store.set_unreachable(reg.registration_id, reg.session_id)  # already
    # An Update over a new session makes it reachable again.
    update = parse_request("POST", ["rd", reg.registration_id], [], None, b"")
    out = registrar.handle(update, peer("node-b"), stored, now=clock.now)
    assert out.save is not None
    await store.apply(out)
    again = await store.get(reg.registration_id)
    assert again is not None and again.reachable and again.session_id == "node-b-s1"
    assert not await store.set_unreachable(reg.registration_id, reg.session_id)  # old session
    # A record written before the flag existed gets it.
    legacy = {k: v for k, v in reg.to_json().items() if k != "reachable"}
    await redis.set(key, json.dumps(legacy, separators=(",", ":")), ex=100)
    assert await store.set_unreachable(reg.registration_id, reg.session_id)
    stored = await store.get(reg.registration_id)
    assert stored is not None and stored.reachable is False


def test_a_device_error_travels_back_with_its_code() -> None:
    from corem_ingress.core.errors import DeviceFailed

    with pytest.raises(DeviceFailed) as info:
        decode_reply(encode_reply(DeviceFailed("blocks", device_code="5.00")))
    assert info.value.device_code == "5.00" and info.value.http_status == 502
