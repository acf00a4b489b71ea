"""Sessions kept for resumption in Redis (``store/dtls_sessions.py``): sealed under a key of
a rotated set the nodes share, bound to their session id, keys pruned once no session
sealed under them can live."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import redis.asyncio as aioredis

from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.embedded_redis import free_port
from corem_ingress.store.dtls_sessions import DtlsSessionStore
from corem_ingress.store.keys import KeySchema

SESSION = StoredSession(
    suite=0xC0A8,
    master=b"m" * 48,
    extended_master_secret=True,
    kind="x509",
    lookup="ab" * 32,
    chain=("cd" * 32,),
    not_after=2e9,
    certificate=b"0\x82\x01\x00 a DER certificate",
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_sessions_are_sealed_shared_rotated_and_bound_to_their_id(redis: Any) -> None:
    keys = KeySchema("resume-" + os.urandom(4).hex())
    clock = Clock(1_000_000.0)
    node1 = DtlsSessionStore(redis, keys, lifetime_s=600, rotation_s=100, clock=clock)
    node2 = DtlsSessionStore(redis, keys, lifetime_s=600, rotation_s=100, clock=clock)
    sid = os.urandom(32)
    await node1.save(sid, SESSION)
    assert await node2.load(sid) == SESSION  # another node reads it
    raw = json.loads(await redis.get(keys.dtls_session(sid.hex())))
    assert raw["kid"] == "10000" and SESSION.master.hex() not in json.dumps(raw)
    assert SESSION.lookup not in json.dumps(raw)  # the credential reference is sealed too
    assert 0 < await redis.ttl(keys.dtls_session(sid.hex())) <= 600
    # Moved under another id, or tampered with: not a session.
    other = os.urandom(32)
    await redis.set(keys.dtls_session(other.hex()), json.dumps(raw))
    assert await node2.load(other) is None
    raw["sealed"] = raw["sealed"][:-2] + ("00" if raw["sealed"][-2:] != "00" else "01")
    await redis.set(keys.dtls_session(sid.hex()), json.dumps(raw))
    assert await node2.load(sid) is None
    # A new period: a new key, set by the first node that stores; the old one stays while
    # sessions sealed under it can live, then goes.
    await node1.save(sid, SESSION)
    clock.now += 100
    await node2.save(os.urandom(32), SESSION)
    assert await _kids(redis, keys) == {"10000", "10001"}
    assert await node1.load(sid) == SESSION
    clock.now += 700  # period 10000 ended 700 s ago, more than the 600 s lifetime
    await node1.save(os.urandom(32), SESSION)
    assert await _kids(redis, keys) == {"10001", "10008"}
    assert await node2.load(sid) is None  # nor from a node's cache (expired anyway)
    await node2.delete(sid)
    assert not await redis.exists(keys.dtls_session(sid.hex()))


async def _kids(redis: Any, keys: KeySchema) -> set[str]:
    return {
        k.decode() if isinstance(k, bytes) else k for k in await redis.hkeys(keys.dtls_session_keys)
    }


def _store(redis: Any, keys: KeySchema, **kw: Any) -> DtlsSessionStore:
    return DtlsSessionStore(redis, keys, lifetime_s=600, rotation_s=100, clock=Clock(1e6), **kw)


def _gated_pipelines(redis: Any) -> tuple[asyncio.Event, list[list[str]]]:
    """Pipelines of ``redis`` whose ``execute`` waits for the returned event (set: open),
    and the commands of each executed one."""
    gate, executed = asyncio.Event(), []
    gate.set()
    real_pipeline = redis.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            await gate.wait()
            executed.append([str(c[0][0]) for c in pipe.command_stack])
            return await real_execute(*a, **k)

        pipe.execute = execute
        return pipe

    redis.pipeline = pipeline
    return gate, executed


async def test_queued_sessions_are_written_in_one_pipeline_per_batch(redis: Any) -> None:
    """Issue 18: the listener queues the sessions of its full handshakes; one background
    writer stores a burst in one pipeline. Until then they resume on this node only."""
    keys = KeySchema("resume-" + os.urandom(4).hex())
    node1, node2 = _store(redis, keys), _store(redis, keys)
    await node1.save(os.urandom(32), SESSION)  # the period's key exists (set once)
    sids = [os.urandom(32) for _ in range(20)]
    _gate, executed = _gated_pipelines(redis)
    writer = asyncio.ensure_future(node1.run_writer())
    try:
        for sid in sids:
            node1.queue(sid, SESSION)
        assert await node1.load(sids[0]) == SESSION  # from the queue
        assert await node2.load(sids[0]) is None  # not in Redis yet
        for _ in range(100):
            if node1.writes:
                break
            await asyncio.sleep(0.01)
        assert [await node2.load(sid) for sid in sids] == [SESSION] * 20
        assert node1.writes == 1 and executed == [["SET"] * 20]
    finally:
        writer.cancel()
        del redis.pipeline


async def test_a_delete_is_never_undone_by_a_pending_or_inflight_save(redis: Any) -> None:
    """A stored session refused at resumption (credential revoked) is deleted: a save of it
    still queued is dropped, and one being written lands before the DEL, never after."""
    keys = KeySchema("resume-" + os.urandom(4).hex())
    store, other = _store(redis, keys), _store(redis, keys)
    queued, inflight = os.urandom(32), os.urandom(32)
    store.queue(queued, SESSION)
    await store.delete(queued)  # before its batch
    assert await store.load(queued) is None
    await store.flush()
    assert not await redis.exists(keys.dtls_session(queued.hex()))

    gate, _executed = _gated_pipelines(redis)
    try:
        store.queue(inflight, SESSION)
        store.queue(os.urandom(32), SESSION)  # two: a pipeline (one alone is a plain SET)
        gate.clear()
        flushing = asyncio.ensure_future(store.flush())
        for _ in range(50):  # until the batch is taken and its pipeline waits on the gate
            if not store._pending:
                break
            await asyncio.sleep(0.01)
        assert not store._pending and not flushing.done()
        deleting = asyncio.ensure_future(store.delete(inflight))
        await asyncio.sleep(0.05)
        assert not deleting.done()  # waits for the batch being written
        assert await store.load(inflight) is None  # nor resumable from memory meanwhile
        gate.set()
        await asyncio.gather(flushing, deleting)
    finally:
        del redis.pipeline
    assert not await redis.exists(keys.dtls_session(inflight.hex()))
    assert await other.load(inflight) is None


async def test_the_queue_is_bounded_and_a_failed_write_never_raises(redis: Any) -> None:
    keys = KeySchema("resume-" + os.urandom(4).hex())
    store = _store(redis, keys, max_pending=2)
    sids = [os.urandom(32) for _ in range(3)]
    for sid in sids:
        store.queue(sid, SESSION)
    assert store.not_stored == {"queue_full": 1}  # the oldest went
    await store.flush()
    assert [bool(await redis.exists(keys.dtls_session(s.hex()))) for s in sids] == [
        False,
        True,
        True,
    ]
    # Redis unreachable: counted and logged, the caller never sees the error.
    unreachable = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        down = _store(unreachable, keys)
        down.queue(os.urandom(32), SESSION)
        down.queue(os.urandom(32), SESSION)
        await down.flush()
        assert down.not_stored == {"store_failed": 2} and down.writes == 0
        assert not down._pending and not down._writing
    finally:
        await unreachable.aclose()

    async def broken() -> tuple[str, bytes]:
        raise RuntimeError("dtls session key vanished")

    # Not a Redis error either: counted, and the writer goes on.
    store._current_key = broken  # type: ignore[method-assign]
    writer = asyncio.ensure_future(store.run_writer())
    try:
        store.queue(os.urandom(32), SESSION)
        for _ in range(100):
            if store.not_stored.get("store_failed"):
                break
            await asyncio.sleep(0.01)
        assert store.not_stored == {"queue_full": 1, "store_failed": 1}
        del store._current_key  # the key is back
        late = os.urandom(32)
        store.queue(late, SESSION)
        for _ in range(100):
            if await redis.exists(keys.dtls_session(late.hex())):
                break
            await asyncio.sleep(0.01)
        assert await redis.exists(keys.dtls_session(late.hex()))
        assert not writer.done()
    finally:
        writer.cancel()
