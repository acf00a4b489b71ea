"""The live uplink tail (Server-Sent Events from the tenant's Redis stream, real node, real
HTTP uplinks): events as they are appended, per device, resumable by Last-Event-ID, only
the token's tenant, bounded per node, ended by a node stop; and the latest uplinks."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from corem_ingress.adapters import http
from corem_ingress.app import Node
from tests.http.conftest import Api

pytestmark = pytest.mark.integration


class Tail:
    """One SSE response, read event by event."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def event(self, timeout: float = 10) -> dict[str, str]:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if "data" in fields:
                        return fields
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value


async def open_tail(
    session: aiohttp.ClientSession, base: str, token: str, query: str = "", **headers: str
) -> Tail:
    resp = await session.get(
        f"{base}/api/v1/uplinks/stream{query}",
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    return Tail(resp)


@pytest.fixture
async def node(start_node: Any, operator_tokens: Any) -> Node:
    path, _ = operator_tokens
    return await start_node(  # type: ignore[no-any-return]
        [http.build],
        http={"admin_tokens_file": str(path)},
        console={"max_streams": 5},
        limits={"auth_fail_max": 0},
    )


async def test_live_tail_per_device_resumable_and_tenant_scoped(
    node: Node, operator_tokens: Any
) -> None:
    _, tokens = operator_tokens
    base = f"http://127.0.0.1:{node.listeners[0].port}"
    async with aiohttp.ClientSession() as session:
        api = Api(session, base, tokens)
        one = await api.provision("acme", "tail-1")
        two = await api.provision("acme", "tail-2")
        other = await api.provision("globex", "tail-g")
        everything = await open_tail(session, base, tokens["acme"])
        only_one = await open_tail(session, base, tokens["acme"], f"?device_id={one['device_id']}")
        globex = await open_tail(session, base, tokens["globex"])

        await api.uplink(two["device_id"], two["api_key"], body={"kind": "event", "payload": 2})
        sent = await api.uplink(
            one["device_id"], one["api_key"], body={"kind": "telemetry", "payload": {"t": 1}}
        )
        await api.uplink(
            other["device_id"], other["api_key"], body={"kind": "state", "payload": "g"}
        )

        first = await everything.event()
        assert first["event"] == "uplink"
        assert json.loads(first["data"])["device_id"] == two["device_id"]
        second = await everything.event()
        data = json.loads(second["data"])
        assert data["device_id"] == one["device_id"] and data["payload"] == {"t": 1}
        assert data["message_id"] == sent.body["message_id"] and data["tenant_id"] == "acme"
        assert int(second["id"].split("-")[0]) > 0

        mine = await only_one.event()  # the other device's uplink is not in this tail
        assert mine["id"] == second["id"]
        theirs = await globex.event()  # nor is any of acme's in globex's
        assert json.loads(theirs["data"])["tenant_id"] == "globex"

        # Resume: what came after the last seen id, in order, in a new tail.
        everything.resp.close()
        for n in (3, 4):
            await api.uplink(one["device_id"], one["api_key"], body={"kind": "event", "payload": n})
        resumed = await open_tail(session, base, tokens["acme"], **{"Last-Event-ID": second["id"]})
        assert [json.loads((await resumed.event())["data"])["payload"] for _ in range(2)] == [3, 4]
        by_query = await open_tail(session, base, tokens["acme"], f"?last_event_id={first['id']}")
        assert (await by_query.event())["id"] == second["id"]

        # The latest uplinks, newest first, of one device.
        reply = await api.request(
            "GET", f"/api/v1/uplinks?device_id={one['device_id']}&limit=2", tenant="acme"
        )
        assert reply.status == 200
        assert [u["payload"] for u in reply.body["uplinks"]] == [4, 3]
        reply = await api.request("GET", "/api/v1/uplinks", tenant="globex")
        assert [u["tenant_id"] for u in reply.body["uplinks"]] == ["globex"]
        for t in (only_one, globex, resumed, by_query):
            t.resp.close()


async def test_tail_refusals_bound_and_stop(node: Node, operator_tokens: Any) -> None:
    _, tokens = operator_tokens
    base = f"http://127.0.0.1:{node.listeners[0].port}"
    async with aiohttp.ClientSession() as session:
        api = Api(session, base, tokens)
        assert (await api.request("GET", "/api/v1/uplinks/stream")).status == 401
        bad = await api.request(
            "GET", "/api/v1/uplinks/stream", tenant="acme", headers={"Last-Event-ID": "yesterday"}
        )
        assert bad.status == 400
        bad = await api.request("GET", "/api/v1/uplinks/stream?device_id=a/b", tenant="acme")
        assert bad.status == 400
        tails = [await open_tail(session, base, tokens["acme"]) for _ in range(5)]
        full = await api.request("GET", "/api/v1/uplinks/stream", tenant="acme")
        assert full.status == 503  # console.max_streams = 5
        tails.pop().resp.close()

        async def room() -> bool:
            reply = await session.get(
                f"{base}/api/v1/uplinks/stream",
                headers={"Authorization": f"Bearer {tokens['acme']}"},
            )
            ok = reply.status == 200
            reply.close()
            return ok

        async with asyncio.timeout(10):
            while not await room():  # the closed tail's slot frees once the server sees it
                await asyncio.sleep(0.1)
        started = time.monotonic()
        await node.stop()  # open tails end with the node, well within its deadline
        assert time.monotonic() - started < node.config.shutdown_deadline_s
        for tail in tails:
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await tail.event(timeout=5)
