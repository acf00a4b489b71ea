"""DTLS 1.2 server (PSK and X.509 on one UDP port) on pyOpenSSL memory BIOs.

``server.DtlsServer`` is the sans-I/O core, ``transport.DtlsTransport`` the
asyncio datagram protocol that only moves bytes; all private binding use is in
``_binding``.
"""

from __future__ import annotations

from corem_ingress.adapters.dtls.events import (
    ApplicationData,
    Credential,
    CredentialNeeded,
    HandshakeCompleted,
    SessionClosed,
)
from corem_ingress.adapters.dtls.server import CIPHERS, DtlsConfig, DtlsServer
from corem_ingress.adapters.dtls.transport import DtlsHandler, DtlsTransport

__all__ = [
    "CIPHERS",
    "ApplicationData",
    "Credential",
    "CredentialNeeded",
    "DtlsConfig",
    "DtlsHandler",
    "DtlsServer",
    "DtlsTransport",
    "HandshakeCompleted",
    "SessionClosed",
]
