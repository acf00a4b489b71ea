"""Stateless DTLS cookies (RFC 6347 4.2.1): HMAC of the peer address and a time bucket.

No per-peer memory: a cookie is valid for the current and the previous bucket.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE_LEN = 16


class CookieJar:
    def __init__(self, *, lifetime: float = 60.0, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._lifetime = lifetime

    def _mac(self, addr: tuple[str, int], bucket: int) -> bytes:
        msg = f"{addr[0]}|{addr[1]}|{bucket}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:COOKIE_LEN]

    def make(self, addr: tuple[str, int], now: float) -> bytes:
        return self._mac(addr, int(now // self._lifetime))

    def check(self, addr: tuple[str, int], cookie: bytes, now: float) -> bool:
        if len(cookie) != COOKIE_LEN:
            return False
        bucket = int(now // self._lifetime)
        return any(hmac.compare_digest(cookie, self._mac(addr, b)) for b in (bucket, bucket - 1))
