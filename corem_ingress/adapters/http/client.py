"""Who the client of a request is: ``request.remote`` set to the real client address.

The TCP peer, unless a trusted proxy said otherwise: the PROXY header read by
``site.ProxyLayer`` (``ClientAddresses``), then, with ``http.trust_forwarded_for``,
``X-Forwarded-For`` from a trusted proxy (``core/trusted_proxies.py``). Everything after
this middleware (the throttle, logs) sees the client's address.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from corem_ingress.adapters.http.errors import Handler
from corem_ingress.adapters.http.site import ClientAddresses
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.trusted_proxies import TrustedProxies

X_FORWARDED_FOR = "X-Forwarded-For"


def middleware(
    addresses: ClientAddresses, trusted: TrustedProxies, *, forwarded_for: bool
) -> Middleware:
    @web.middleware
    async def client_address(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = addresses.get(request.protocol) or request.remote or "unknown"
        client = peer
        if forwarded_for:
            values = request.headers.getall(X_FORWARDED_FOR, [])
            try:
                client = trusted.client_from_forwarded_for(peer, values)
            except ValueError:
                raise InvalidArgument("X-Forwarded-For is malformed") from None
        if client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return client_address
