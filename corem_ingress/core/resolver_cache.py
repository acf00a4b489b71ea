"""The resolver's in-process cache: positive and negative entries with TTLs, LRU-bounded,
and each tenant's trust (its CA fingerprints and self-signed setting).

Pure: the clock is an argument. The bus keeps it current (evict on revoke,
expiry on rotate, a tenant's trust on a trust event, drop-all after a reconnect);
TTLs bound staleness if an event is ever missed.

Outage grace (``resolver.outage_grace_s``): after a bus gap the cache cannot be trusted
(revocations may have been missed) and is emptied. With a grace period, the positive
entries verified within that many seconds before the gap began are kept aside as
*fallbacks*: never answered from directly, only when Redis cannot be asked (the resolver
tries Redis first, every time), until the outage ends.
"""

from __future__ import annotations

import dataclasses
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
    #: When Redis last said so (the time of the lookup that made this entry).
    verified_at: float = 0.0
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
        #: Positive entries kept through a bus gap under the outage grace (see above).
        self._fallbacks: dict[CacheKey, CacheEntry] = {}
        #: tenant -> (trust, fresh until)
        self._trust: OrderedDict[str, tuple[TenantTrust, float]] = OrderedDict()
        #: Bumped whenever trust is dropped: a read that started before may not be stored.
        self.trust_epoch = 0
        #: Tenants' trust kept through a bus gap under the outage grace (like ``_fallbacks``).
        self._trust_fallbacks: dict[str, TenantTrust] = {}
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
            identity,
            now + self.ttl,
            secret,
            credential_expires_at,
            verified_at=now,
            proven_self_signed=proven_self_signed,
        )
        self._store((kind, lookup), entry)
        self._fallbacks.pop((kind, lookup), None)  # Redis answered: the fallback is spent
        return entry

    def put_negative(self, kind: CredentialKind, lookup: str, now: float) -> None:
        self._fallbacks.pop((kind, lookup), None)
        if self.negative_ttl > 0:
            self._store((kind, lookup), CacheEntry(None, now + self.negative_ttl, verified_at=now))

    def evict(self, kind: CredentialKind, lookup: str) -> None:
        self._entries.pop((kind, lookup), None)
        self._fallbacks.pop((kind, lookup), None)

    def set_credential_expiry(self, kind: CredentialKind, lookup: str, expires_at: float) -> None:
        for table in (self._entries, self._fallbacks):
            entry = table.get((kind, lookup))
            if entry is not None and entry.identity is not None:
                table[(kind, lookup)] = dataclasses.replace(entry, credential_expires_at=expires_at)

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
        self._trust_fallbacks.pop(tenant_id, None)

    def trust_fallback(self, tenant_id: str) -> TenantTrust | None:
        """The tenant's trust kept through the gap, only while Redis cannot be asked."""
        return self._trust_fallbacks.get(tenant_id)

    def clear(self) -> None:
        self._entries.clear()
        self._fallbacks.clear()
        self.trust_epoch += 1
        self._trust.clear()
        self._trust_fallbacks.clear()

    # -- outage grace ----------------------------------------------------------------------------
    def suspend(self, gap_started_at: float, grace_s: float) -> int:
        """A bus gap: nothing is answered from the cache any more. Positive entries verified
        at or after ``gap_started_at - grace_s`` become fallbacks (none when ``grace_s`` is 0);
        returns how many."""
        if grace_s > 0:
            since = gap_started_at - grace_s
            for key, entry in self._entries.items():
                if entry.identity is not None and entry.verified_at >= since:
                    self._fallbacks[key] = entry
            if len(self._fallbacks) > self.max_entries:  # gaps in a row: keep the newest
                newest = sorted(self._fallbacks.items(), key=lambda kv: kv[1].verified_at)
                self._fallbacks = dict(newest[-self.max_entries :])
            # A tenant's trust was read within the TTL before the gap: kept with the entries.
            for tenant_id, (trust, fresh_until) in self._trust.items():
                if fresh_until - self.ttl >= since:
                    self._trust_fallbacks[tenant_id] = trust
        self._entries.clear()
        self.trust_epoch += 1
        self._trust.clear()
        return len(self._fallbacks)

    def fallback(self, kind: CredentialKind, lookup: str) -> CacheEntry | None:
        """The entry kept through the gap, for use only while Redis cannot be asked."""
        return self._fallbacks.get((kind, lookup))

    def end_outage(self) -> None:
        """Redis answers again and the live sessions are re-validated: no more fallbacks."""
        self._fallbacks.clear()
        self._trust_fallbacks.clear()

    @property
    def fallbacks(self) -> int:
        return len(self._fallbacks)

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def _store(self, key: CacheKey, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
