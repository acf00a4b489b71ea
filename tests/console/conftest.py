"""Console fixtures: the HTTP tests' operator tokens (two tenants), the MQTT tests' PKI, and
the LwM2M tests' node with the simulator's LwM2M client."""

from __future__ import annotations

from tests.coap.conftest import certs  # noqa: F401  (fixtures, used by name)
from tests.http.conftest import operator_tokens  # noqa: F401
from tests.lwm2m.conftest import lwm2m_node  # noqa: F401
from tests.mqtt.conftest import pki  # noqa: F401
