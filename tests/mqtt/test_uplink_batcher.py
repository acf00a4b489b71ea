"""The uplink batcher against the real Redis: what is acknowledged is stored, in order."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import redis.asyncio as aioredis

from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.uplink_batcher import UplinkBatcher

pytestmark = pytest.mark.integration


def uplink(tenant: str, i: int) -> Uplink:
    ident = DeviceIdentity(tenant, "0b0e0c6a-3f1e-4a51-9a0b-2f0f5f7f1a11", CredentialKind.X509, "f")
    return Uplink.new(ident, Transport.MQTT, UplinkKind.TELEMETRY, {"i": i}, now=1.0)


def test_the_redis_py_connection_api_we_rely_on_is_there() -> None:
    """uplinks.py sends self-packed commands on a pooled connection: fail loudly if it moves."""
    assert "check_health" in inspect.signature(aioredis.Connection.send_packed_command).parameters
    assert inspect.iscoroutinefunction(aioredis.Connection.read_response)
    assert inspect.iscoroutinefunction(aioredis.ConnectionPool.get_connection)
    assert inspect.iscoroutinefunction(aioredis.ConnectionPool.release)


async def test_batches_keep_order_and_report_per_stream_failures(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    batcher = UplinkBatcher(redis, keys, max_batch=7)
    # The "broken" tenant's stream key holds a string: its XADDs fail (WRONGTYPE).
    await redis.set(keys.uplink_stream("broken"), "not a stream")
    results: list[tuple[str, int, bool]] = []
    for i in range(20):
        for tenant in ("acme", "broken"):
            batcher.submit(
                uplink(tenant, i),
                lambda err, t=tenant, n=i: results.append((t, n, err is None)),
            )
    await batcher.drain(10)
    assert len(results) == 40 and batcher.batches == 6
    assert [n for t, n, ok in results if t == "acme" and ok] == list(range(20))
    assert not [r for r in results if r[0] == "broken" and r[2]]
    entries = await redis.xrange(keys.uplink_stream("acme"))
    assert [e[1]["payload"] for e in entries] == [f'{{"i":{i}}}' for i in range(20)]
    assert entries[0][1]["transport"] == "mqtt"
    await batcher.close()


async def test_unreachable_redis_fails_every_item(keys: KeySchema) -> None:
    from corem_ingress.app import redis_client
    from corem_ingress.embedded_redis import free_port

    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    batcher = UplinkBatcher(dead, keys)
    errors: list[Unavailable | None] = []
    for i in range(3):
        batcher.submit(uplink("acme", i), errors.append)
    await asyncio.wait_for(batcher.drain(10), 15)
    assert len(errors) == 3 and all(isinstance(e, Unavailable) for e in errors)
    await dead.aclose()


async def test_kept_connection_has_no_socket_timeout_of_its_own_and_gets_it_back(
    redis: aioredis.Redis, keys: KeySchema
) -> None:
    """The batch is bounded by ``timeout_s`` as a whole; the kept connection's own socket
    timeout is off meanwhile (issue 18: redis-py's per-call timeouts), and back once the
    connection returns to the pool."""
    pool_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    batcher = UplinkBatcher(redis, keys)
    errors: list[Unavailable | None] = []
    batcher.submit(uplink("acme", 0), errors.append)
    await batcher.drain(10)
    assert errors == [None]
    kept = batcher._conn
    assert kept is not None and kept.socket_timeout is None
    await batcher.close()
    assert kept.socket_timeout == pool_timeout


async def test_a_redis_that_never_answers_fails_the_batch_within_timeout_s(
    keys: KeySchema,
) -> None:
    """A peer that takes the connection and the EVAL but never replies: without the
    connection's own timeout, ``timeout_s`` alone ends the batch (nothing acknowledged),
    and the broken connection is not kept."""
    from corem_ingress.app import redis_client

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)  # takes what is sent, answers nothing
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mute = redis_client(f"redis://127.0.0.1:{port}/0", socket_timeout=30.0)
    batcher = UplinkBatcher(mute, keys, timeout_s=0.5)
    errors: list[Unavailable | None] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(3):
        batcher.submit(uplink("acme", i), errors.append)
    await asyncio.wait_for(batcher.drain(10), 15)
    assert loop.time() - started < 5
    assert len(errors) == 3 and all(isinstance(e, Unavailable) for e in errors)
    assert batcher._conn is None
    await batcher.close()
    await mute.aclose()
    server.close()
