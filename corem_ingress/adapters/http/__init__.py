"""HTTP adapter (aiohttp): device uplink with API keys, and the operator admin API.

``build(services)`` returns the listener (None when ``http.enabled`` is false).
Modules, one job each: ``uplink`` (device route), ``device_auth`` (which key a
request carries), ``admin`` (operator routes), ``operators`` (operator tokens),
``bodies`` (bounded bodies, strict JSON), ``errors`` (the one error shape),
``openapi`` (the served document), ``listener`` (apps and shutdown), ``site`` (sockets:
PROXY header, TLS, aiohttp's own errors), ``client`` (the real client address), ``tls``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corem_ingress.adapters.http.listener import HttpListener
    from corem_ingress.services import Services


def build(services: Services) -> HttpListener | None:
    import structlog

    from corem_ingress.adapters.http.listener import HttpListener, build_apps
    from corem_ingress.adapters.http.operators import OperatorTokens
    from corem_ingress.adapters.http.site import ClientAddresses

    cfg = services.config.http
    if not cfg.enabled:
        return None
    cfg.validate()
    tokens: OperatorTokens | None = None
    if cfg.admin_mode != "off":
        tokens = OperatorTokens.load(cfg)
        if not tokens:
            structlog.get_logger("corem.http").warning(
                "http.admin_no_tokens",
                note="admin API enabled but no operator tokens configured: every call gets 401 "
                "(set http.admin_tokens_file or COREM_HTTP_ADMIN_TOKENS)",
            )
    addresses = ClientAddresses()
    return HttpListener(services, build_apps(services, tokens, addresses), addresses)
