"""Every HTTP error is ``{"error": {"code", "message"}}`` with the matching status.

The core's IngressError already knows its HTTP status; the few errors that exist
only in HTTP (no such route, method not allowed, body too large, unsupported
media type) are IngressErrors too, so one middleware renders them all (it also runs the
request checks every route shares, client address and strict query string, before the
handler). An unexpected exception is a 500 INTERNAL with a generic message (and a log
line); a client's mistake must never reach that branch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import redis.exceptions
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from corem_ingress import metrics
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import (
    IngressError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = structlog.get_logger("corem.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Realm named in ``WWW-Authenticate`` by each API.
DEVICE_REALM = "corem-device"
ADMIN_REALM = "corem-admin"


class RouteNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no such route")


class MethodNotAllowed(IngressError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    cli_exit = 2


class PayloadTooLarge(IngressError):
    code = "PAYLOAD_TOO_LARGE"
    http_status = 413
    cli_exit = 2


class UnsupportedMediaType(IngressError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415
    cli_exit = 2


class Internal(IngressError):
    """Our bug, never the client's: the message says nothing more."""

    def __init__(self) -> None:
        super().__init__("internal error")


def error_response(
    exc: IngressError,
    *,
    realm: str = DEVICE_REALM,
    retry_after_s: int = 1,
    headers: dict[str, str] | None = None,
) -> web.Response:
    out = dict(headers or {})
    out["Cache-Control"] = "no-store"
    if isinstance(exc, Unauthenticated):
        # Which failure it was (missing, malformed, unknown, revoked, expired) stays in our log.
        out["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    elif isinstance(exc, Unavailable):
        out["Retry-After"] = str(retry_after_s)
    elif isinstance(exc, ResourceExhausted):
        out["Retry-After"] = str(exc.retry_after_s)
    return web.json_response(exc.to_json(), status=exc.http_status, headers=out)


class _NoBannerResponse(web.Response):
    """A response with no ``Server`` header even where no app hook runs (aiohttp's own errors)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


def protocol_error_response(status: int) -> web.Response:
    """Our answer to a request aiohttp could not parse (it chose ``status``).

    The message is generic: aiohttp's own would quote the offending line, which may hold a
    credential.
    """
    err: IngressError
    if status == 413:
        err = PayloadTooLarge("request is larger than the configured limit")
    elif 400 <= status < 500:
        err = InvalidArgument("malformed HTTP request")
    else:
        err = Internal()
    return _NoBannerResponse(
        body=json.dumps(err.to_json()).encode(),
        status=err.http_status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _from_http_exception(exc: web.HTTPException) -> tuple[IngressError, dict[str, str]]:
    status = exc.status
    if status == 404:
        return RouteNotFound(), {}
    if status == 405:
        allow = exc.headers.get("Allow", "")
        return MethodNotAllowed("method not allowed on this route"), {"Allow": allow}
    if status == 413:
        return PayloadTooLarge("request body is larger than the configured limit"), {}
    if status == 415:
        return UnsupportedMediaType("unsupported content type"), {}
    if 400 <= status < 500:
        return InvalidArgument("malformed request"), {}
    return Internal(), {}


def middleware(
    *,
    realm_for: Callable[[web.Request], str],
    retry_after_s: int,
    prepare: Callable[[web.Request], web.Request] | None = None,
) -> Middleware:
    """The one middleware of every HTTP app here: ``prepare`` (the request checks that run
    before any handler: the client address, the strict query string; it returns the request
    the handler gets, and raises IngressError for a refusal), the handler, and every error
    rendered as our JSON. One coroutine layer per request: the checks are synchronous."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request if prepare is None else prepare(request))
        except IngressError as exc:
            if isinstance(exc, PayloadTooLarge):
                metrics.limit_refused("http", Cause.MAX_SIZE)
            _log_refusal(request, exc)
            return error_response(exc, realm=realm_for(request), retry_after_s=retry_after_s)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            err, headers = _from_http_exception(exc)
            if isinstance(err, PayloadTooLarge):
                metrics.limit_refused("http", Cause.MAX_SIZE)
            return error_response(
                err, realm=realm_for(request), retry_after_s=retry_after_s, headers=headers
            )
        except redis.exceptions.RedisError as exc:
            # Anything the store did not map itself: the store is the problem, not the client.
            log.warning("http.redis_error", route=route_of(request), error=type(exc).__name__)
            return error_response(Unavailable(), retry_after_s=retry_after_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http.internal_error", method=request.method, route=route_of(request))
            return error_response(Internal())

    return edge


def route_of(request: web.Request) -> str:
    """The route template, never the raw path (a client may put anything there, even a key)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _log_refusal(request: web.Request, exc: IngressError) -> None:
    route = route_of(request)
    if isinstance(exc, Unavailable):
        log.warning("http.unavailable", route=route, reason=exc.reason)
    elif isinstance(exc, Unauthenticated):
        # The reason (malformed, unknown or revoked, overlap ended...) is for operators only.
        log.info("http.unauthenticated", route=route, reason=exc.reason)
    elif isinstance(exc, ResourceExhausted):
        log.info("http.limited", route=route, reason=exc.reason)
    else:
        log.debug("http.refused", route=route, code=exc.code)
