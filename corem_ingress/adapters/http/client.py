"""Who the client of a request is: ``request.remote`` set to the real client address.

The TCP peer, unless a trusted proxy said otherwise: the PROXY header read by
``site.ProxyLayer`` (``ClientAddresses``), then, with ``http.trust_forwarded_for``,
``X-Forwarded-For`` from a trusted proxy (``core/trusted_proxies.py``). Everything after
it (the throttle, logs) sees the client's address.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from corem_ingress.adapters.http.site import ClientAddresses
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.trusted_proxies import TrustedProxies

X_FORWARDED_FOR = "X-Forwarded-For"


def client_setter(
    addresses: ClientAddresses, trusted: TrustedProxies, *, forwarded_for: bool
) -> Callable[[web.Request], web.Request]:
    """The request with ``remote`` set to the real client (a clone only when it differs);
    a malformed ``X-Forwarded-For`` from a trusted proxy is a 400. Runs in the one
    middleware (``errors.middleware``), before any handler."""

    def with_client(request: web.Request) -> web.Request:
        remote = request.remote
        # The PROXY header's address: only connections through ``site.ProxyLayer`` have one.
        peer = addresses.get(request.protocol) or remote or "unknown"
        client = peer
        if forwarded_for:
            values = request.headers.getall(X_FORWARDED_FOR, [])
            try:
                client = trusted.client_from_forwarded_for(peer, values)
            except ValueError:
                raise InvalidArgument("X-Forwarded-For is malformed") from None
        if client != remote:
            return request.clone(remote=client)
        return request

    return with_client
