"""Liveness, readiness and Prometheus metrics on the metrics/health port (9100 by default)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from corem_ingress import metrics

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def build_app(ready_check: ReadyCheck) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = await ready_check()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status=200 if ok else 503,
        )

    async def metrics_text(_request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app
