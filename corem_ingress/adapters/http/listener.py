"""The HTTP listener(s): aiohttp apps on loopback-or-configured sockets.

One listener serves the device uplink and, unless the admin API is split off
(``http.admin_mode``/``http.admin_port``) or turned off, the admin API as well.
Sockets go through ``site.EdgeSite`` (PROXY header, TLS, our JSON for aiohttp's own
errors); ``errors.middleware``, the one middleware, makes ``request.remote`` the real
client's address (``client.py``) and refuses unknown query parameters (``bodies.py``).
``stop`` stops accepting first, then lets in-flight requests (and their Redis
appends) finish within the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from corem_ingress.adapters.http import bodies, client, errors, openapi, tls
from corem_ingress.adapters.http.admin import AdminApi
from corem_ingress.adapters.http.operators import OperatorTokens
from corem_ingress.adapters.http.provisioning import CLAIM_PROVISION
from corem_ingress.adapters.http.site import ClientAddresses, EdgeSite
from corem_ingress.adapters.http.uplink import DeviceApi
from corem_ingress.core.proxy_protocol import ProxyMode
from corem_ingress.services import Services

log = structlog.get_logger("corem.http")


class _NoRawRequestInLog(logging.Filter):
    """aiohttp logs a malformed request with the offending raw line (which may hold a key).

    Keep the event, drop the bytes: only the peer address and the error class remain.
    (aiohttp itself answers such a request with a text/plain 400 and closes.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "http.malformed_request peer=%s error=%s status=%s"
            record.args = (peer, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


#: The aiohttp protocol logger of our listeners (aiohttp's own would print raw lines).
protocol_log = logging.getLogger("corem.http.protocol")
protocol_log.addFilter(_NoRawRequestInLog())


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One aiohttp application and where it listens."""

    role: str  # "device+admin", "device" or "admin"
    app: web.Application
    host: str
    port: int


def _app(
    services: Services,
    realm_for: Callable[[web.Request], str],
    addresses: ClientAddresses,
    *,
    hsts: bool,
) -> web.Application:
    cfg = services.config.http
    with_client = client.client_setter(
        addresses, services.access.trusted_proxies, forwarded_for=cfg.trust_forwarded_for
    )
    check_query = bodies.query_checker()

    def prepare(request: web.Request) -> web.Request:
        request = with_client(request)  # first: a malformed X-Forwarded-For is the answer
        check_query(request)
        return request

    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        # One middleware (errors, client address, strict query): each layer is a coroutine
        # and a wrapper per request (docs/benchmarks.md, issue 18, fourth session).
        middlewares=[
            errors.middleware(realm_for=realm_for, retry_after_s=cfg.retry_after_s, prepare=prepare)
        ],
    )

    async def headers(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)
        if hsts:
            response.headers["Strict-Transport-Security"] = tls.HSTS

    app.on_response_prepare.append(headers)
    app.router.add_get(openapi.OPENAPI_PATH, openapi.serve)
    return app


def _realm_by_path(request: web.Request) -> str:
    device = request.path.endswith("/uplink") or request.path == CLAIM_PROVISION
    return errors.DEVICE_REALM if device else errors.ADMIN_REALM


def build_apps(
    services: Services, tokens: OperatorTokens | None, addresses: ClientAddresses | None = None
) -> list[AppSpec]:
    """The apps this config asks for; ``tokens`` None: no admin API."""
    cfg = services.config.http
    addresses = ClientAddresses() if addresses is None else addresses
    https = bool(cfg.tls_cert)
    device = DeviceApi(services)
    admin = AdminApi(services, tokens) if tokens is not None else None
    separate = cfg.admin_mode == "separate" or (cfg.admin_mode == "auto" and cfg.admin_port != 0)
    if admin is None:
        app = _app(services, lambda _r: errors.DEVICE_REALM, addresses, hsts=False)
        device.add_routes(app)
        return [AppSpec("device", app, cfg.host, cfg.port)]
    if not separate:
        app = _app(services, _realm_by_path, addresses, hsts=https)
        device.add_routes(app)
        admin.add_routes(app)
        return [AppSpec("device+admin", app, cfg.host, cfg.port)]
    device_app = _app(services, lambda _r: errors.DEVICE_REALM, addresses, hsts=False)
    device.add_routes(device_app)
    admin_app = _app(services, lambda _r: errors.ADMIN_REALM, addresses, hsts=https)
    admin.add_routes(admin_app)
    return [
        AppSpec("device", device_app, cfg.host, cfg.port),
        AppSpec("admin", admin_app, cfg.admin_host, cfg.admin_port),
    ]


class HttpListener:
    name = "http"

    def __init__(
        self, services: Services, apps: list[AppSpec], addresses: ClientAddresses | None = None
    ) -> None:
        self._services = services
        self.apps = apps
        #: Client addresses named by PROXY headers, per live connection (shared by the apps).
        self.addresses = ClientAddresses() if addresses is None else addresses
        self._ssl_context = tls.server_context(services.config.http)
        self._runners: list[web.AppRunner] = []
        self._sites: list[EdgeSite] = []
        #: Bound ports once started (the device listener's is ``port``).
        self.port = apps[0].port
        self.admin_port: int | None = None

    async def start(self) -> None:
        cfg = self._services.config
        deadline = cfg.shutdown_deadline_s
        try:
            for spec in self.apps:
                runner = web.AppRunner(
                    spec.app,
                    access_log=None,
                    handle_signals=False,
                    shutdown_timeout=deadline,
                    logger=protocol_log,
                )
                await runner.setup()
                self._runners.append(runner)
                site = EdgeSite(
                    runner,
                    spec.host,
                    spec.port,
                    ssl_context=self._ssl_context,
                    proxy_mode=ProxyMode(cfg.http.proxy_protocol),
                    trusted=self._services.access.trusted_proxies,
                    addresses=self.addresses,
                    reuse_port=cfg.reuse_port,
                )
                await site.start()
                self._sites.append(site)
                if "device" in spec.role:
                    self.port = site.port
                if "admin" in spec.role:
                    self.admin_port = site.port
                log.info(
                    "http.listening",
                    role=spec.role,
                    host=spec.host,
                    port=site.port,
                    tls=self._ssl_context is not None,
                    proxy_protocol=cfg.http.proxy_protocol,
                )
        except BaseException:
            await self._cleanup()
            raise

    async def stop(self, deadline: float) -> None:
        for site in self._sites:  # stop accepting everywhere first
            with contextlib.suppress(Exception):
                await site.stop()
        try:
            await asyncio.wait_for(self._cleanup(), timeout=max(0.1, deadline))
        except TimeoutError:
            log.warning("http.stop_deadline", deadline_s=deadline)

    async def _cleanup(self) -> None:
        runners, self._runners, self._sites = self._runners, [], []
        for runner in runners:
            await runner.cleanup()  # closes idle keep-alives, waits for in-flight handlers
