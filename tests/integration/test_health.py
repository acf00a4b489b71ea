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


async def test_the_health_port_names_no_server_software() -> None:
    """Like the HTTP API (docs/http-api.md), no ``Server: Python/… aiohttp/…`` banner: not on
    the probes, the metrics, nor aiohttp's own 404/405. Before, every answer carried it."""
    from aiohttp.test_utils import TestServer

    from corem_ingress import health

    def report() -> health.Report:
        return health.Report(ready=True, accepting=True, dependencies={"redis": True})

    async with (
        TestServer(health.build_app(report), host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        for method, path, status in [
            ("GET", "/healthz", 200),
            ("GET", "/readyz", 200),
            ("GET", "/metrics", 200),
            ("GET", "/nope", 404),
            ("POST", "/healthz", 405),
        ]:
            async with session.request(method, server.make_url(path)) as resp:
                assert resp.status == status, path
                assert "Server" not in resp.headers, (method, path, resp.headers["Server"])
