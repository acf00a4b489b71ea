"""Which API key a device request carries: ``Authorization: Bearer`` or ``X-API-Key``.

Only the extraction lives here; the resolver decides whether the key is valid.
Every authentication failure is the same UNAUTHENTICATED to the peer; the reason
goes to the log through the error's ``reason``.
"""

from __future__ import annotations

import hmac

from multidict import MultiMapping

from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import InvalidArgument, Unauthenticated

AUTHORIZATION = "Authorization"
X_API_KEY = "X-API-Key"
#: Longer header values cannot be keys (keys are 51 characters); refused before any work.
MAX_CREDENTIAL_CHARS = 512


def bearer_token(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or Unauthenticated."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_CREDENTIAL_CHARS:
        raise Unauthenticated(cause=Cause.MALFORMED)
    return token


def _single(headers: MultiMapping[str], name: str) -> str | None:
    values = headers.getall(name, [])
    if len(values) > 1:
        raise InvalidArgument(f"send the {name} header once")
    return values[0] if values else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def api_key_from_headers(headers: MultiMapping[str]) -> str:
    """The presented key. Both headers present and different: 400; none or malformed: 401."""
    authorization = _single(headers, AUTHORIZATION)
    x_api_key = _single(headers, X_API_KEY)
    from_bearer = bearer_token(authorization) if authorization is not None else None
    if x_api_key is not None:
        x_api_key = x_api_key.strip()
        if not x_api_key or len(x_api_key) > MAX_CREDENTIAL_CHARS:
            raise Unauthenticated(cause=Cause.MALFORMED)
    if from_bearer is not None and x_api_key is not None:
        if not _same(from_bearer, x_api_key):
            raise InvalidArgument(
                "Authorization and X-API-Key carry different keys: send one of them"
            )
        return from_bearer
    key = from_bearer if from_bearer is not None else x_api_key
    if key is None:
        raise Unauthenticated(cause=Cause.NO_CREDENTIAL)
    return key
