"""MQTT 3.1.1 over TLS (mTLS or API-key password): the device listener.

A sans-I/O protocol core (``codec``, ``connection``, ``events``) plus a thin asyncio
layer (``protocol``, ``listener``), TLS over memory BIOs (``tls``), authentication
through the shared resolver (``auth``, ``admission``), topic policy (``policy``) and
downlink delivery (``downlink``). See docs/mqtt.md for why this is not built on amqtt.

Nothing is imported here: the pure core loads without asyncio, Redis or OpenSSL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corem_ingress.adapters.mqtt.listener import MqttListener
    from corem_ingress.services import Services


def build(services: Services) -> MqttListener | None:
    """The listener if ``mqtt.enabled``; raises ConfigError for a bad ``mqtt.*`` value."""
    from corem_ingress.adapters.mqtt.listener import MqttListener

    cfg = services.config.mqtt
    if not cfg.enabled:
        return None
    cfg.validate()
    return MqttListener(services)
