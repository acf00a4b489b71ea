"""Liveness, readiness and Prometheus metrics on the metrics/health port (9100 by default).

* ``/healthz`` -- liveness: the process and its event loop answer. Restarting a node does
  not bring back a shared Redis, so nothing else is checked here.
* ``/readyz`` -- readiness: this node serves devices (listeners started, not shutting
  down). A shared dependency's outage does *not* make it unready by default: every node
  would fail together, the load balancer would empty its endpoints, and devices would get
  silence instead of a prompt "try later". The body carries ``degraded`` -- what is down
  and what devices get meanwhile -- and the ``corem_degraded`` metric says the same.
  (``health.readiness_requires_redis: true`` restores "unready while Redis is down".)

Both answer from the node's last dependency check (``health.check_interval_s``): a probe
never waits for Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from corem_ingress import metrics

#: What each degraded reason means for devices (the /readyz body says it too).
EFFECTS = {
    "redis": "new authentications the cache cannot vouch for and uplinks are refused with "
    "a retry hint (HTTP 503 + Retry-After, CONNACK 3, CoAP 5.03 + Max-Age)",
    "bus": "revocations from other nodes are not received; the cache is re-validated when "
    "the bus is back",
    "outage_grace": "credentials verified just before the outage keep authenticating "
    "(resolver.outage_grace_s)",
}


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    accepting: bool
    #: Dependency -> up (``redis``, ``bus``).
    dependencies: dict[str, bool]
    #: Why this node is degraded (empty: it is not).
    degraded: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not ready",
            "accepting": self.accepting,
            "checks": self.dependencies,
            "degraded": bool(self.degraded),
            "degraded_reasons": {r: EFFECTS.get(r, r) for r in self.degraded},
        }


def build_app(report: Callable[[], Report]) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        now = report()
        return web.json_response(now.to_json(), status=200 if now.ready else 503)

    async def metrics_text(_request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    async def no_banner(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)  # like the HTTP API: no software/version banner

    app = web.Application()
    app.on_response_prepare.append(no_banner)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app
