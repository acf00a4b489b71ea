"""Certificates for the behaviour suite's drivers: the MQTT tests' session PKI and the
CoAP tests' per-test certificate set (the same fixtures, imported)."""

from tests.coap.conftest import certs  # noqa: F401  (fixture)
from tests.mqtt.conftest import pki  # noqa: F401  (fixture)
