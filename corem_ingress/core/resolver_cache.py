"""The resolver's in-process cache: positive and negative entries with TTLs, LRU-bounded,
and each tenant's trust (its CA fingerprints and self-signed setting).

Pure: the clock is an argument. The bus keeps it current (evict on revoke,
expiry on rotate, a tenant's trust on a trust event, drop-all after a reconnect);
TTLs bound staleness if an event is ever missed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import TenantTrust


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
    #: X.509: registered as a self-signed certificate with proof of possession of its key.
    proven_self_signed: bool = False

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
        #: tenant -> (trust, fresh until)
        self._trust: OrderedDict[str, tuple[TenantTrust, float]] = OrderedDict()
        #: Bumped whenever trust is dropped: a read that started before may not be stored.
        self.trust_epoch = 0
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
        proven_self_signed: bool = False,
    ) -> CacheEntry:
        entry = CacheEntry(
            identity, now + self.ttl, secret, credential_expires_at, proven_self_signed
        )
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
                entry.identity,
                entry.fresh_until,
                entry.secret,
                expires_at,
                entry.proven_self_signed,
            )

    # -- tenant trust ------------------------------------------------------------------------
    def get_trust(self, tenant_id: str, now: float) -> TenantTrust | None:
        """The tenant's trust if fresh, or None when Redis must be asked."""
        found = self._trust.get(tenant_id)
        if found is None:
            return None
        trust, fresh_until = found
        if now >= fresh_until:
            del self._trust[tenant_id]
            return None
        self._trust.move_to_end(tenant_id)
        return trust

    def put_trust(self, tenant_id: str, trust: TenantTrust, now: float, *, epoch: int) -> None:
        """Store what was read at ``epoch`` (``trust_epoch`` before the read); a trust event
        since then makes the read stale, and it is not stored."""
        if epoch != self.trust_epoch:
            return
        self._trust[tenant_id] = (trust, now + self.ttl)
        self._trust.move_to_end(tenant_id)
        while len(self._trust) > self.max_entries:
            self._trust.popitem(last=False)

    def evict_trust(self, tenant_id: str) -> None:
        self.trust_epoch += 1
        self._trust.pop(tenant_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self.trust_epoch += 1
        self._trust.clear()

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def _store(self, key: CacheKey, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
