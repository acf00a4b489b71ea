"""HTTPS for both HTTP listeners when ``http.tls_cert``/``http.tls_key`` are set.

TLS 1.2 or later; TLS 1.2 with the same forward-secret AEAD suites as the MQTT listener
(TLS 1.3 suites are all AEAD: OpenSSL's defaults). No client certificates: devices use
API keys here, operators their tokens.
"""

from __future__ import annotations

import ssl

from corem_ingress.adapters.mqtt.tls import TLS12_CIPHERS
from corem_ingress.config import ConfigError, HttpConfig

#: ``Strict-Transport-Security`` on the admin API's answers when it is served over TLS.
HSTS = "max-age=31536000"


def server_context(cfg: HttpConfig) -> ssl.SSLContext | None:
    """The server context, or None for plain HTTP (no certificate configured)."""
    if not cfg.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
    )
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        # Names the files, never their content.
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unusable"
        raise ConfigError(
            f"config: http.tls_cert/http.tls_key: cannot load {cfg.tls_cert} / {cfg.tls_key}: "
            f"{reason}"
        ) from None
    return ctx
