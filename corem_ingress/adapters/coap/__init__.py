"""CoAP over DTLS 1.2: the device listener (``build``) and the reusable CoAP layer
(``endpoint``, ``site``, ``listener``, ``guard``). Nothing is imported here until
``build`` runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corem_ingress.adapters import Listener
    from corem_ingress.services import Services


def build(services: Services) -> Listener | None:
    from corem_ingress import metrics
    from corem_ingress.adapters.coap.guard import CoapGuard
    from corem_ingress.adapters.coap.listener import CoapListener

    if not services.config.coap.enabled:
        return None
    listener = CoapListener(services)
    guard = CoapGuard(services)  # limits and metrics
    listener.transport.set_guard(guard)
    metrics.track(dtls=listener.dtls_server)
    listener.site.limit_uplinks(guard.rate_limited)
    if services.config.lwm2m.enabled:
        from corem_ingress.adapters.lwm2m.server import Lwm2mServer

        # Send and notifications count against the device's message rate like /up does.
        listener.lwm2m = Lwm2mServer(
            services, listener, append=guard.rate_limited(services.uplinks.append)
        )
    return listener
