"""The operator console: a small static app (vanilla JS, no build step, no CDN) served by the
admin listener at ``/console``, calling the admin API on the same origin with the
operator token it keeps in the tab's sessionStorage (never a cookie, never in a URL).

Every console response carries a strict Content-Security-Policy (scripts and styles from
this origin only, no inline script, fetches to this origin only, no framing) and
``X-Frame-Options: DENY``. Files are read once from the package (``console/``); only the
names listed in ``ASSETS`` are served.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

CONSOLE = "/console"
CONSOLE_INDEX = "/console/"
CONSOLE_ASSET = "/console/{name}"

#: Served files and their media types (anything else under /console is a 404).
ASSETS = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@cache
def asset(name: str) -> bytes:
    return resources.files("corem_ingress.adapters.http").joinpath("console", name).read_bytes()


def add_routes(app: web.Application) -> None:
    app.router.add_get(CONSOLE, _redirect)
    app.router.add_get(CONSOLE_INDEX, _index)
    app.router.add_get(CONSOLE_ASSET, _asset)


async def _redirect(_request: web.Request) -> web.Response:
    raise web.HTTPFound(CONSOLE_INDEX, headers=SECURITY_HEADERS)


async def _index(_request: web.Request) -> web.Response:
    return _file("index.html")


async def _asset(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


def _file(name: str) -> web.Response:
    media = ASSETS.get(name)
    if media is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=asset(name), content_type=media, charset="utf-8", headers=SECURITY_HEADERS
    )
