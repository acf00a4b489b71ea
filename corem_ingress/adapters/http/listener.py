"""The HTTP listener(s): aiohttp apps on loopback-or-configured sockets.

One listener serves the device uplink and, unless the admin API is split off
(``http.admin_mode``/``http.admin_port``) or turned off, the admin API as well.
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

from corem_ingress.adapters.http import errors, openapi
from corem_ingress.adapters.http.admin import AdminApi
from corem_ingress.adapters.http.operators import OperatorTokens
from corem_ingress.adapters.http.uplink import DeviceApi
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


def _app(services: Services, realm_for: Callable[[web.Request], str]) -> web.Application:
    cfg = services.config.http
    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        middlewares=[errors.middleware(realm_for=realm_for, retry_after_s=cfg.retry_after_s)],
    )

    async def no_server_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)

    app.on_response_prepare.append(no_server_header)
    app.router.add_get(openapi.OPENAPI_PATH, openapi.serve)
    return app


def _realm_by_path(request: web.Request) -> str:
    return errors.DEVICE_REALM if request.path.endswith("/uplink") else errors.ADMIN_REALM


def build_apps(services: Services, tokens: OperatorTokens | None) -> list[AppSpec]:
    """The apps this config asks for; ``tokens`` None: no admin API."""
    cfg = services.config.http
    device = DeviceApi(services)
    admin = AdminApi(services, tokens) if tokens is not None else None
    separate = cfg.admin_mode == "separate" or (cfg.admin_mode == "auto" and cfg.admin_port != 0)
    if admin is None:
        app = _app(services, lambda _r: errors.DEVICE_REALM)
        device.add_routes(app)
        return [AppSpec("device", app, cfg.host, cfg.port)]
    if not separate:
        app = _app(services, _realm_by_path)
        device.add_routes(app)
        admin.add_routes(app)
        return [AppSpec("device+admin", app, cfg.host, cfg.port)]
    device_app = _app(services, lambda _r: errors.DEVICE_REALM)
    device.add_routes(device_app)
    admin_app = _app(services, lambda _r: errors.ADMIN_REALM)
    admin.add_routes(admin_app)
    return [
        AppSpec("device", device_app, cfg.host, cfg.port),
        AppSpec("admin", admin_app, cfg.admin_host, cfg.admin_port),
    ]


class HttpListener:
    name = "http"

    def __init__(self, services: Services, apps: list[AppSpec]) -> None:
        self._services = services
        self.apps = apps
        self._runners: list[web.AppRunner] = []
        self._sites: list[web.TCPSite] = []
        #: Bound ports once started (the device listener's is ``port``).
        self.port = apps[0].port
        self.admin_port: int | None = None

    async def start(self) -> None:
        deadline = self._services.config.shutdown_deadline_s
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
                site = web.TCPSite(runner, spec.host, spec.port)
                await site.start()
                self._sites.append(site)
                if "device" in spec.role:
                    self.port = site.port
                if "admin" in spec.role:
                    self.admin_port = site.port
                log.info("http.listening", role=spec.role, host=spec.host, port=site.port)
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
