"""The sessions index across nodes (real Redis, real MQTT clients): a session held by node B
is listed from node A's admin API and by the CLI, only to its tenant; an operator disconnect
is routed to B, is not a revocation, and is audited; entries go when a node dies."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exceptions

from corem_ingress.adapters import http, mqtt
from corem_ingress.app import Node
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.sessions import LiveSession
from corem_ingress.embedded_redis import free_port
from corem_ingress.store.sessions_index import SessionsIndex, SessionsIndexWriter
from tests.mqtt.conftest import (
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    provision_key,
)

pytestmark = pytest.mark.integration

#: Short heartbeats (entries expire after 3): a dead node drops out within a second.
INDEX = {"index_interval_s": 0.25}


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str, tokens: dict[str, str]):
        self.session, self.base, self.tokens = session, base, tokens

    async def call(self, method: str, path: str, tenant: str = "acme") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}"}
        async with self.session.request(method, self.base + path, headers=headers) as resp:
            return resp.status, await resp.json()

    async def sessions(self, query: str = "", tenant: str = "acme") -> list[dict[str, Any]]:
        status, body = await self.call("GET", f"/api/v1/sessions{query}", tenant)
        assert status == 200, body
        return list(body["sessions"])


async def until(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def connect(port: int, pki: Any, dev: Any) -> RawClient:
    client = await RawClient.open(port, client_ssl(pki, None))
    await client.send(connect_packet(dev.device_id, password=dev.api_key))
    connack = await client.read_packet()
    assert connack is not None and connack[3] == 0, connack
    return client


def cli(args: list[str], redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COREM_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "corem_ingress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_session_on_node_b_is_listed_and_disconnected_from_node_a(
    start_node: Any, operator_tokens: Any, pki: Any, registry: Any, redis_url: str
) -> None:
    path, tokens = operator_tokens
    a: Node = await start_node(
        [http.build],
        http={"admin_tokens_file": str(path)},
        sessions=INDEX,
        limits={"auth_fail_max": 0},
    )
    b: Node = await start_node(
        [mqtt.build], mqtt=mqtt_section(pki, client_auth="optional"), sessions=INDEX
    )
    dev = await provision_key(registry, "acme", "console-hw-1")
    device = await connect(b.listeners[0].port, pki, dev)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, f"http://127.0.0.1:{a.listeners[0].port}", tokens)

        async def listed() -> bool:
            return len(await admin.sessions()) == 1

        await until(listed)
        (entry,) = await admin.sessions()
        assert entry["node_id"] == b.config.node_id != a.config.node_id
        assert entry["device_id"] == dev.device_id and entry["transport"] == "mqtt"
        assert entry["credential_kind"] == "api_key" and entry["peer"].startswith("127.0.0.1:")
        assert entry["since"] > 0
        assert await admin.sessions(f"?device_id={dev.device_id}") == [entry]
        assert await admin.sessions("?transport=coap") == []
        assert await admin.sessions("?transport=mqtt&device_id=other") == []
        status, body = await admin.call("GET", "/api/v1/sessions?transport=smtp")
        assert status == 400, body
        # LwM2M devices' sessions are listed as coap (their DTLS sessions): a filter by a
        # transport no session ever has is refused, not answered with an empty list.
        for never in ("lwm2m", "http", "dtls"):
            status, body = await admin.call("GET", f"/api/v1/sessions?transport={never}")
            assert status == 400 and "mqtt, coap" in body["error"]["message"], body

        # Another tenant sees nothing of it and cannot disconnect it.
        assert await admin.sessions(tenant="globex") == []
        status, body = await admin.call(
            "DELETE", f"/api/v1/sessions/{entry['session_id']}", "globex"
        )
        assert status == 404, body

        # The CLI sees what the API sees (straight from Redis).
        r = await asyncio.to_thread(
            cli, ["sessions", "list", "--tenant", "acme", "--transport", "mqtt"], redis_url
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sessions"] == [entry]

        # Disconnect from A: B closes the session; the credential stays valid.
        status, body = await admin.call("DELETE", f"/api/v1/sessions/{entry['session_id']}")
        assert status == 200, body
        assert body["disconnected"] is True and body["revoked"] is False
        assert "not revoked" in body["note"] and body["session"] == entry
        assert await device.closed_by_server()
        assert await admin.sessions() == []
        status, audit = await admin.call("GET", "/api/v1/audit?action=sessions.disconnect")
        assert status == 200, audit
        (record, *_older) = audit["records"]
        assert record["actor"] == "admin:ops-acme" and record["outcome"] == "OK"
        assert f"session={entry['session_id']}" in record["target"]
        assert f"node={b.config.node_id}" in record["target"]
        status, other = await admin.call("GET", "/api/v1/audit", "globex")
        # globex's audit holds only its own refused attempt, nothing of acme's disconnect.
        assert all(r["tenant_id"] == "globex" for r in other["records"])
        assert [r["outcome"] for r in other["records"] if r["action"] == "sessions.disconnect"] == [
            "NOT_FOUND"
        ]
        assert not any(dev.device_id in r["target"] for r in other["records"])

        again = await connect(b.listeners[0].port, pki, dev)  # not revoked: it may come back
        await until(listed)
        (second,) = await admin.sessions()
        assert second["session_id"] != entry["session_id"]

        # The CLI's disconnect is routed the same way.
        r = await asyncio.to_thread(
            cli,
            ["sessions", "disconnect", "--tenant", "acme", "--session", second["session_id"]],
            redis_url,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["disconnected"] is True
        assert await again.closed_by_server()
        await device.close()
        await again.close()


async def test_the_sessions_of_a_node_that_dies_expire(
    start_node: Any, operator_tokens: Any, pki: Any, registry: Any
) -> None:
    path, tokens = operator_tokens
    a: Node = await start_node([http.build], http={"admin_tokens_file": str(path)}, sessions=INDEX)
    b: Node = await start_node(
        [mqtt.build], mqtt=mqtt_section(pki, client_auth="optional"), sessions=INDEX
    )
    dev = await provision_key(registry, "acme", "console-hw-2")
    device = await connect(b.listeners[0].port, pki, dev)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, f"http://127.0.0.1:{a.listeners[0].port}", tokens)

        async def listed() -> bool:
            return len(await admin.sessions()) == 1

        await until(listed)
        by_id: dict[str, Any] = {}

        async def status_shared() -> bool:
            status, nodes = await admin.call("GET", "/api/v1/nodes")
            assert status == 200, nodes
            by_id.update({n["node_id"]: n for n in nodes["nodes"]})
            return by_id.get(b.config.node_id, {}).get("sessions") == {"mqtt": 1}

        await until(status_shared)
        assert by_id[b.config.node_id]["tenant_sessions"] == {"mqtt": 1}
        assert by_id[b.config.node_id]["sessions"] == {"mqtt": 1}
        assert by_id[a.config.node_id]["tenant_sessions"] == {}

        # B "dies": its heartbeat and writer stop (no clean leave), its device still connected.
        for task in b._tasks:
            if task.get_name().startswith("sessions-index"):
                task.cancel()

        async def gone() -> bool:
            return await admin.sessions() == []

        await until(gone, timeout=5)
        _status, nodes = await admin.call("GET", "/api/v1/nodes")
        assert b.config.node_id not in {n["node_id"] for n in nodes["nodes"]}
        assert b.services is not None and len(b.services.sessions) == 1  # still held on B
        await device.close()


async def test_a_clean_stop_leaves_the_index_at_once(
    start_node: Any, pki: Any, registry: Any, redis: Any
) -> None:
    b: Node = await start_node(
        [mqtt.build],
        mqtt=mqtt_section(pki, client_auth="optional"),
        sessions={"index_interval_s": 30},
    )
    dev = await provision_key(registry, "acme", "console-hw-3")
    device = await connect(b.listeners[0].port, pki, dev)
    key = b.keys.node_sessions(b.config.node_id, "acme")

    async def written() -> bool:
        return bool(await redis.hlen(key))

    await until(written)
    await b.stop()
    assert not await redis.exists(key)
    assert await redis.zscore(b.keys.sessions_nodes, b.config.node_id) is None
    await device.close()


def _live(n: int, tenant: str = "acme") -> LiveSession:
    identity = DeviceIdentity(tenant, f"dev-{n}", CredentialKind.API_KEY, f"key_{n:016x}")
    return LiveSession(f"s-{n}", "mqtt", identity, f"lookup-{n}", peer=f"192.0.2.{n}:1883")


async def test_the_index_is_bounded_and_rewritten_after_a_failed_write(
    redis: Any, keys: Any
) -> None:
    writer = SessionsIndexWriter(redis, keys, "node-x", interval_s=1.0, max_entries=2)
    await writer.heartbeat()  # the first heartbeat writes everything (nothing yet)
    writer.added(_live(1))
    writer.added(_live(2))
    writer.added(_live(3))  # past max_entries: live, but not listed
    assert len(writer) == 2
    batch, writer._pending = writer._pending, []
    await writer._write_changes(batch)
    key = keys.node_sessions("node-x", "acme")
    assert sorted(await redis.hkeys(key)) == ["s-1", "s-2"]
    assert 0 < await redis.pttl(key) <= 3000
    entry = json.loads(await redis.hget(key, "s-1"))
    assert entry["peer"] == "192.0.2.1:1883" and "lookup" not in json.dumps(entry)

    # Redis unreachable for a heartbeat: changes meanwhile are not lost, the next
    # heartbeat that gets through rewrites the node's entries in full.
    unreachable = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    writer._r = unreachable
    with pytest.raises(redis_exceptions.ConnectionError):
        await writer.heartbeat()
    writer.removed("acme", "s-1")
    writer.removed("acme", "s-2")
    writer.added(_live(4, tenant="globex"))
    assert writer._pending == []  # dirty: left to the full rewrite
    writer._r = redis
    await writer.heartbeat()
    assert not await redis.exists(key)  # the tenant whose sessions all went
    assert await redis.hkeys(keys.node_sessions("node-x", "globex")) == ["s-4"]
    index = SessionsIndex(redis, keys, interval_s=1.0)
    assert [e["session_id"] for e in (await index.of_tenant("globex"))[0]] == ["s-4"]
    assert (await index.of_tenant("acme"))[0] == []
    await unreachable.aclose()


async def test_a_late_heartbeat_writes_back_entries_that_expired(redis: Any, keys: Any) -> None:
    """A node whose heartbeat came too late (event loop stalled past the TTL) finds its hash
    gone and writes its sessions again, instead of staying invisible while alive."""
    writer = SessionsIndexWriter(redis, keys, "node-slow", interval_s=0.05, max_entries=10)
    writer.added(_live(7))
    await writer.heartbeat()  # the first one writes everything
    key = keys.node_sessions("node-slow", "acme")
    assert await redis.hkeys(key) == ["s-7"]
    await redis.delete(key)  # what the TTL does when no heartbeat came in time
    await writer.heartbeat()
    assert await redis.hkeys(key) == ["s-7"]
    assert 0 < await redis.pttl(key) <= 150


async def test_sessions_that_come_and_go_within_one_batch_cost_no_redis_write(
    redis: Any, keys: Any
) -> None:
    """Issue 18 (handshake CPU): the writer keeps each session's last change per batch; a
    session added and removed within one batch is never written, a removal of a session
    written earlier still deletes it, and each tenant's hash gets one PEXPIRE per batch."""
    writer = SessionsIndexWriter(redis, keys, "node-b", interval_s=1.0, max_entries=10)
    await writer.heartbeat()
    writer.added(_live(1))
    batch, writer._pending = writer._pending, []
    await writer._write_changes(batch)  # s-1 written
    key = keys.node_sessions("node-b", "acme")
    assert await redis.hkeys(key) == ["s-1"]
    writer.added(_live(2))
    writer.added(_live(3))
    writer.removed("acme", "s-2")  # came and went
    writer.removed("acme", "s-1")  # written before: deleted
    writer.added(_live(4, tenant="globex"))
    batch, writer._pending = writer._pending, []
    commands: list[str] = []
    real_pipeline = redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            commands.extend(str(c[0][0]) for c in pipe.command_stack)
            return await real_execute(*a, **k)

        pipe.execute = execute
        return pipe

    writer._r.pipeline = counting_pipeline
    try:
        await writer._write_changes(batch)
    finally:
        del writer._r.pipeline
    assert await redis.hkeys(key) == ["s-3"]
    assert await redis.hkeys(keys.node_sessions("node-b", "globex")) == ["s-4"]
    assert sorted(commands) == ["HDEL", "HSET", "HSET", "PEXPIRE", "PEXPIRE"]
    assert writer.sessions_skipped == 1


async def test_the_writer_lets_a_burst_gather_into_one_pipeline(redis: Any, keys: Any) -> None:
    writer = SessionsIndexWriter(redis, keys, "node-burst", interval_s=1.0, max_entries=100)
    await writer.heartbeat()
    task = asyncio.ensure_future(writer.run_writer())
    try:
        for n in range(20):  # a burst within one loop iteration after another
            writer.added(_live(n))
            await asyncio.sleep(0)
        key = keys.node_sessions("node-burst", "acme")
        for _ in range(100):
            if await redis.hlen(key) == 20:
                break
            await asyncio.sleep(0.02)
        assert await redis.hlen(key) == 20
        assert writer.writes == 1
    finally:
        task.cancel()
