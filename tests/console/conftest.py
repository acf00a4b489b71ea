"""Console fixtures: the HTTP tests' operator tokens (two tenants) and the MQTT tests' PKI."""

from __future__ import annotations

from tests.http.conftest import operator_tokens  # noqa: F401  (fixtures, used by name)
from tests.mqtt.conftest import pki  # noqa: F401
