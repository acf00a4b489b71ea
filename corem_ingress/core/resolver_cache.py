"""The resolver's in-process cache: positive and negative entries with TTLs, LRU-bounded.

Pure: the clock is an argument. The bus keeps it current (evict on revoke,
expiry on rotate, drop-all after a reconnect); TTLs bound staleness if an event
is ever missed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from corem_ingress.core.identity import CredentialKind, DeviceIdentity


@dataclass(frozen=True, slots=True)
class CacheEntry:
    #: None marks a negative entry: "Redis said no" (unknown or revoked).
    identity: DeviceIdentity | None
    #: When this entry stops being trusted.
    fresh_until: float
    #: The PSK bytes, for PSK entries (the DTLS handshake needs them synchronously).
    secret: bytes | None = None
    #: When the credential itself stops working (end of an API-key overlap window).
    credential_expires_at: float | None = None

    def credential_expired(self, now: float) -> bool:
        return self.credential_expires_at is not None and now >= self.credential_expires_at


CacheKey = tuple[CredentialKind, str]


class ResolverCache:
    def __init__(self, *, ttl: float, negative_ttl: float, max_entries: int) -> None:
        if ttl <= 0 or negative_ttl < 0 or max_entries < 1:
            raise ValueError("cache ttl must be > 0, negative_ttl >= 0, max_entries >= 1")
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, kind: CredentialKind, lookup: str, now: float) -> CacheEntry | None:
        """A fresh entry (possibly negative), or None when Redis must be asked."""
        key = (kind, lookup)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.fresh_until:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(
        self,
        kind: CredentialKind,
        lookup: str,
        identity: DeviceIdentity,
        now: float,
        *,
        secret: bytes | None = None,
        credential_expires_at: float | None = None,
    ) -> CacheEntry:
        entry = CacheEntry(identity, now + self.ttl, secret, credential_expires_at)
        self._store((kind, lookup), entry)
        return entry

    def put_negative(self, kind: CredentialKind, lookup: str, now: float) -> None:
        if self.negative_ttl > 0:
            self._store((kind, lookup), CacheEntry(None, now + self.negative_ttl))

    def evict(self, kind: CredentialKind, lookup: str) -> None:
        self._entries.pop((kind, lookup), None)

    def set_credential_expiry(self, kind: CredentialKind, lookup: str, expires_at: float) -> None:
        entry = self._entries.get((kind, lookup))
        if entry is not None and entry.identity is not None:
            self._entries[(kind, lookup)] = CacheEntry(
                entry.identity, entry.fresh_until, entry.secret, expires_at
            )

    def clear(self) -> None:
        self._entries.clear()

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def _store(self, key: CacheKey, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
