"""API keys: ``sk_live_`` + URL-safe base64 (no padding) of 32 random bytes; SHA-256 is kept."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from corem_ingress.core.errors import InvalidArgument

PREFIX = "sk_live_"
RAW_BYTES = 32
# 32 bytes -> 43 base64 characters without padding; the last one carries only 4 bits.
_FORMAT = re.compile(r"^sk_live_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")


def generate() -> str:
    token = base64.urlsafe_b64encode(secrets.token_bytes(RAW_BYTES)).rstrip(b"=").decode()
    return PREFIX + token


def is_well_formed(raw: str) -> bool:
    """The format alone: 43 characters of the URL-safe alphabet whose last one has its two
    low bits clear always decode to exactly 32 bytes (a unit test holds it), so no decode
    on the request path."""
    return isinstance(raw, str) and _FORMAT.fullmatch(raw) is not None


def check(raw: str) -> str:
    if not is_well_formed(raw):
        # Never echo the input: it may be a real key with a typo.
        raise InvalidArgument("API key is malformed")
    return raw


def hash_key(raw: str) -> str:
    """Lower-case hex SHA-256 of the key's text; the storage and lookup handle."""
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)
