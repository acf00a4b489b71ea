"""The pure modules load nothing of the I/O world: each is imported in a fresh interpreter
and must not pull in asyncio, Redis, pyOpenSSL, aiohttp, aiocoap, Prometheus or YAML
(package ``__init__`` files included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "corem_ingress"
FORBIDDEN = ("asyncio", "redis", "OpenSSL", "aiohttp", "aiocoap", "prometheus_client", "yaml")
#: Pure modules outside core/ and lwm2m/: the sans-I/O protocol pieces of the adapters.
ADAPTER_CORES = (
    "corem_ingress.adapters.mqtt.codec",
    "corem_ingress.adapters.mqtt.connection",
    "corem_ingress.adapters.mqtt.events",
    "corem_ingress.adapters.mqtt.policy",
    "corem_ingress.adapters.mqtt.downlink",
    "corem_ingress.adapters.dtls.records",
    "corem_ingress.adapters.dtls.events",
    "corem_ingress.adapters.dtls.cookies",
    "corem_ingress.adapters.dtls.ratelimit",
    "corem_ingress.adapters.dtls.timers",
    "corem_ingress.adapters.coap.blockwise",
    "corem_ingress.adapters.coap.retransmit",
)


def pure_modules() -> list[str]:
    found = []
    for pkg in ("core", "lwm2m"):
        for path in sorted((PACKAGE / pkg).glob("*.py")):
            name = f"corem_ingress.{pkg}" + ("" if path.stem == "__init__" else f".{path.stem}")
            found.append(name)
    return found + list(ADAPTER_CORES)


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_loads_no_io(module: str) -> None:
    code = f"import sys, {module}\nprint(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "", f"importing {module} loads {out}"
