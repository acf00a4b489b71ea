"""Readiness, liveness and "degraded" of an in-process node (docs/operations.md, "Health")."""

from __future__ import annotations

import asyncio

import aiohttp

from corem_ingress.app import Node
from tests.conftest import make_config


async def _readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def test_ready_while_serving_unready_as_soon_as_it_stops(
    redis_url: str, redis: object, kek_env: str
) -> None:
    node = Node(make_config(redis_url, health={"check_interval_s": 0.05}), listener_factories=[])
    await node.start()
    stopped = False
    try:
        assert node.health_port is not None
        async with asyncio.timeout(10):
            while (await _readyz(node.health_port))[1]["degraded"]:
                await asyncio.sleep(0.02)
        status, body = await _readyz(node.health_port)
        assert status == 200 and body["status"] == "ready" and body["accepting"] is True
        assert body["checks"] == {"redis": True, "bus": True} and body["degraded_reasons"] == {}
        # SIGTERM's first step: no longer accepting, so no longer ready (before any draining).
        stopping = asyncio.ensure_future(node.stop())
        await asyncio.sleep(0)
        report = node.health_report()
        assert report.ready is False and report.accepting is False
        await stopping
        stopped = True
    finally:
        if not stopped:
            await node.stop()
