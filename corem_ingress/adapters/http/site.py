"""The sockets of one HTTP listener: PROXY header, TLS, then aiohttp, in that order.

aiohttp's ``TCPSite`` is replaced by ``EdgeSite`` for three reasons:

* PROXY protocol (``http.proxy_protocol``): the header precedes TLS, so it is read here,
  below TLS, by ``core/proxy_protocol.ProxyPreamble``; the address it names is kept in
  ``ClientAddresses`` for the request's handler (``client.py`` makes it ``request.remote``);
* TLS (``http.tls_cert``): asyncio's TLS layer, stacked above the PROXY layer;
* aiohttp answers a request it cannot parse (a malformed header...) itself, with a
  text/plain body that echoes the offending line (an operator token included) and a
  ``Server: Python/... aiohttp/...`` banner. Our handler class answers those with the one
  JSON error body, no banner (``errors.protocol_error_response``).
"""

from __future__ import annotations

import asyncio
import ssl
import typing
from asyncio import sslproto
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from corem_ingress import metrics
from corem_ingress.adapters.http import errors
from corem_ingress.core.proxy_protocol import ProxyHeaderError, ProxyMode, ProxyPreamble
from corem_ingress.core.trusted_proxies import TrustedProxies

log = structlog.get_logger("corem.http")

TRANSPORT = "http"
#: A PROXY header must be complete within this many seconds of the TCP accept.
PROXY_HEADER_TIMEOUT_S = 10.0
#: A TLS handshake must complete within this many seconds.
TLS_HANDSHAKE_TIMEOUT_S = 10


class ClientAddresses:
    """The client address a PROXY header named, per live connection (its request handler)."""

    def __init__(self) -> None:
        self._by_handler: dict[object, str] = {}

    def set(self, handler: object, client: str) -> None:
        self._by_handler[handler] = client

    def get(self, handler: object) -> str | None:
        return self._by_handler.get(handler)

    def discard(self, handler: object) -> None:
        self._by_handler.pop(handler, None)

    def __len__(self) -> int:
        return len(self._by_handler)


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers in our JSON shape.

    Instances are aiohttp's own, re-classed (same layout: no new slots), so nothing of its
    constructor is repeated here.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The listener's logger filter keeps only the error's class (listener.py): the
        # message may quote the raw line.
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send the error")
        response = errors.protocol_error_response(status)
        response.force_close()
        return response


def make_handler(server: web.Server) -> RequestHandler:
    handler = server()
    handler.__class__ = JsonErrorRequestHandler
    return handler


class ProxyLayer(asyncio.Protocol):
    """Reads the PROXY header of one connection, then hands the stream to ``inner``."""

    def __init__(
        self,
        server: web.Server,
        addresses: ClientAddresses,
        *,
        trusted: TrustedProxies,
        required: bool,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._server = server
        self._addresses = addresses
        self._trusted = trusted
        self._required = required
        self._ssl_context = ssl_context
        self._transport: asyncio.Transport | None = None
        self._preamble: ProxyPreamble | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handler: RequestHandler | None = None
        self._inner: asyncio.BaseProtocol | None = None
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport is not a subclass.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        ip, port = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        self._peer = f"{ip}:{port}"
        self._preamble = ProxyPreamble(
            ip, port, trusted=ip in self._trusted, required=self._required
        )
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(PROXY_HEADER_TIMEOUT_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._forward(data)
            return
        preamble, transport = self._preamble, self._transport
        if preamble is None or transport is None:
            return
        try:
            decided = preamble.feed(data)
        except ProxyHeaderError as exc:
            metrics.proxy_refused(TRANSPORT)
            log.info("http.proxy_refused", peer=self._peer, reason=str(exc))
            self._preamble = None
            transport.close()
            return
        if decided is None:
            return
        self._preamble = None
        self._cancel_timer()
        handler = make_handler(self._server)
        self._handler = handler
        if decided.proxied:
            self._addresses.set(handler, decided.client)
        inner: asyncio.BaseProtocol = handler
        if self._ssl_context is not None:
            inner = sslproto.SSLProtocol(
                asyncio.get_running_loop(),
                handler,
                self._ssl_context,
                None,  # type: ignore[arg-type]  # no waiter: nothing awaits the handshake
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
            )
        self._inner = inner
        inner.connection_made(transport)
        if decided.rest:
            self._forward(decided.rest)

    def _forward(self, data: bytes) -> None:
        inner = self._inner
        if isinstance(inner, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(inner.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                inner.buffer_updated(n)
                view = view[n:]
        elif isinstance(inner, asyncio.Protocol):
            inner.data_received(data)

    def eof_received(self) -> bool | None:
        inner = self._inner
        if isinstance(inner, asyncio.Protocol | asyncio.BufferedProtocol):
            return inner.eof_received()
        return None  # the header never completed: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._handler is not None:
            self._addresses.discard(self._handler)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class EdgeSite(web.BaseSite):
    """A TCP site with the PROXY layer (when on), TLS (when configured) and JSON errors."""

    __slots__ = (
        "_addresses",
        "_bound_port",
        "_host",
        "_port",
        "_proxy_mode",
        "_reuse_port",
        "_trusted",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        proxy_mode: ProxyMode,
        trusted: TrustedProxies,
        addresses: ClientAddresses,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._proxy_mode = proxy_mode
        self._trusted = trusted
        self._addresses = addresses

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        kwargs: dict[str, Any] = {"backlog": self._backlog, "reuse_address": True}
        if self._reuse_port:  # several processes on one port (``reuse_port``)
            kwargs["reuse_port"] = True
        if self._proxy_mode is ProxyMode.OFF:

            def factory() -> asyncio.BaseProtocol:
                return make_handler(server)

            if self._ssl_context is not None:
                kwargs["ssl"] = self._ssl_context
                kwargs["ssl_handshake_timeout"] = TLS_HANDSHAKE_TIMEOUT_S
        else:
            required = self._proxy_mode is ProxyMode.REQUIRED

            def factory() -> asyncio.BaseProtocol:
                return ProxyLayer(
                    server,
                    self._addresses,
                    trusted=self._trusted,
                    required=required,
                    ssl_context=self._ssl_context,
                )

        self._server = await loop.create_server(factory, self._host, self._port, **kwargs)
        sockets = self._server.sockets
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port
