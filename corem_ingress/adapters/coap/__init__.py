"""CoAP over DTLS 1.2: the device listener (``build``) and the reusable CoAP layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.guard import CoapGuard
from corem_ingress.adapters.coap.listener import CoapListener

if TYPE_CHECKING:
    from corem_ingress.adapters import Listener
    from corem_ingress.services import Services

__all__ = ["CoapEndpoint", "CoapListener", "build"]


def build(services: Services) -> Listener | None:
    if not services.config.coap.enabled:
        return None
    listener = CoapListener(services)
    guard = CoapGuard(services)  # limits and metrics (issue 8)
    listener.transport.set_guard(guard)
    listener.site.limit_uplinks(guard.rate_limited)
    if services.config.lwm2m.enabled:
        from corem_ingress.adapters.lwm2m.server import Lwm2mServer

        # Send and notifications count against the device's message rate like /up does.
        listener.lwm2m = Lwm2mServer(
            services, listener, append=guard.rate_limited(services.uplinks.append)
        )
    return listener
