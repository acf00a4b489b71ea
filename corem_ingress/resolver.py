"""The one shared credential resolver: API key, PSK identity or fingerprint -> DeviceIdentity.

Adapters call nothing else to authenticate. Lookups go to the in-process cache
first, then to Redis (batched into MGETs by ``store.lookups.LookupBatcher``; every wait
bounded by ``redis.socket_timeout_s``). The revocation bus keeps the cache current.

A certificate is more than its fingerprint: the chain the device presented must hold
one of the resolved tenant's CAs (``core/trust.py``). The tenant's trust is cached
beside the credentials, so the DTLS handshake's synchronous callbacks can decide too.
Fail closed: if Redis cannot be asked, only what the cache can still vouch for
is accepted; everything else is refused (UNAVAILABLE, which adapters treat as
"not authenticated").

Outage policy after a bus gap (``resolver.outage_grace_s``, docs/reliability.md): with 0
(the default) the cache is emptied and nothing is vouched for until Redis answers; with
a grace period, credentials verified within that many seconds before the gap keep
authenticating while Redis cannot be asked -- Redis is always tried first -- and the
session hub re-validates everything once Redis answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress import metrics
from corem_ingress.core import api_keys, certs, psk
from corem_ingress.core.causes import Cause
from corem_ingress.core.claims import is_pending
from corem_ingress.core.errors import FailedPrecondition, Unauthenticated, Unavailable
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.resolver_cache import CacheEntry, ResolverCache
from corem_ingress.core.trust import PeerChain, TenantTrust
from corem_ingress.store.connection import ClientCommands
from corem_ingress.store.first_use import FirstUse
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lookups import LookupBatcher

log = structlog.get_logger("corem.resolver")


@dataclass(frozen=True, slots=True)
class ResolvedPsk:
    identity: DeviceIdentity
    psk: bytes


class Resolver:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        cache: ResolverCache,
        *,
        keyring: psk.KeyRing | None,
        clock: Callable[[], float] = time.time,
        lookups: LookupBatcher | None = None,
        timeout_s: float = 2.0,
        outage_grace_s: float = 0.0,
    ) -> None:
        self._keys = keys
        self.cache = cache
        self._keyring = keyring
        self._clock = clock
        #: Reads of lookup keys (the node passes one on its own pool; else on ``redis``).
        self.lookups = lookups or LookupBatcher(ClientCommands(redis), timeout_s=timeout_s)
        #: Just-in-time provisioning of an unregistered certificate (its DER): True when it
        #: is registered now (``Registry.jit_provision``; wired by the node).
        self.on_unknown_cert: Callable[[bytes, bool], Awaitable[bool]] | None = None
        #: Drops the pending mark of a credential a claim issued, at its first use.
        self._first_use = FirstUse(redis, keys)
        self.outage_grace_s = outage_grace_s
        #: Bumped by every cache change from the bus: a lookup that overlapped one reads again.
        self._epoch = 0

    # -- async path (fills the cache) ------------------------------------------------------
    def cached_api_key(self, raw: str) -> DeviceIdentity | None:
        """The key's device from the cache alone, or None (not cached: ``resolve_api_key``).
        Refuses like it (malformed, cached as unknown or revoked, expired); synchronous,
        so a request answered from the cache builds no coroutine for it."""
        entry = self._cached(CredentialKind.API_KEY, self._api_key_lookup(raw))
        return None if entry is None else entry.identity

    async def resolve_api_key(self, raw: str) -> DeviceIdentity:
        entry = await self._resolve(CredentialKind.API_KEY, self._api_key_lookup(raw))
        assert entry.identity is not None
        return entry.identity

    async def resolve_psk(self, identity: str) -> ResolvedPsk:
        try:
            psk.check_identity(identity)
        except Exception:
            raise self._refuse(CredentialKind.PSK, Cause.MALFORMED) from None
        entry = await self._resolve(CredentialKind.PSK, identity)
        assert entry.identity is not None and entry.secret is not None
        return ResolvedPsk(entry.identity, entry.secret)

    async def resolve_cert(
        self,
        fingerprint: str,
        *,
        chain: PeerChain | None,
        fallback: bool = True,
        der: bytes | None = None,
    ) -> DeviceIdentity:
        """The certificate's device, if ``chain`` (as the listener verified it) ends in one of
        that tenant's CAs. ``chain=None`` checks the registration only and fills the cache
        (the DTLS path: its handshake callback checks the chain from the cache).

        ``der``: the certificate itself, from a handshake. Unregistered, it goes to
        ``on_unknown_cert`` (just-in-time provisioning, ``store/registry/jitp.py``), the one
        place an unknown certificate that chains to an auto-provisioning CA is decided;
        if that registered it, it resolves like any other."""
        try:
            certs.check_fingerprint(fingerprint)
        except Exception:
            raise self._refuse(CredentialKind.X509, Cause.MALFORMED) from None
        try:
            entry = await self._resolve(CredentialKind.X509, fingerprint, fallback=fallback)
        except Unauthenticated as exc:
            hook = self.on_unknown_cert
            if der is None or hook is None or exc.cause is not Cause.UNKNOWN_OR_REVOKED:
                raise
            # With ``chain`` the handshake is complete: possession of the key is proven (the
            # DTLS path asks mid-handshake, before the client's CertificateVerify).
            proven = chain is not None
            if certs.fingerprint_der(der) != fingerprint or not await hook(der, proven):
                raise
            self.cache.evict(CredentialKind.X509, fingerprint)
            entry = await self._resolve(CredentialKind.X509, fingerprint, fallback=fallback)
        assert entry.identity is not None
        trust = await self._tenant_trust(entry.identity.tenant_id, fallback=fallback)
        if chain is not None:
            self._check_chain(entry, trust, chain)
        return entry.identity

    async def resolve_lookup(
        self,
        kind: CredentialKind,
        lookup: str,
        *,
        chain: PeerChain | None = None,
        fallback: bool = True,
    ) -> DeviceIdentity:
        """By stored handle (key hash, PSK identity, fingerprint): to re-validate sessions.

        A certificate session passes the chain it authenticated with, so that a removed CA
        (or a tenant no longer allowing self-signed devices) ends it. ``fallback=False`` (to
        re-validate sessions): only Redis or a fresh cache entry may vouch, never the outage
        grace.
        """
        if kind is CredentialKind.X509:
            return await self.resolve_cert(lookup, chain=chain, fallback=fallback)
        entry = await self._resolve(kind, lookup, fallback=fallback)
        assert entry.identity is not None
        return entry.identity

    def fallback_vouches(self, kind: CredentialKind, lookup: str) -> bool:
        """Whether the outage grace keeps this credential working while Redis is away."""
        entry = self.cache.fallback(kind, lookup)
        return (
            entry is not None
            and entry.identity is not None
            and not entry.credential_expired(self._clock())
        )

    def credential_expiry(self, kind: CredentialKind, lookup: str) -> float | None:
        """When a resolved credential stops working (API-key overlap), if the cache knows."""
        entry = self.cache.get(kind, lookup, self._clock())
        return entry.credential_expires_at if entry else None

    # -- sync path (DTLS handshake callbacks) ----------------------------------------------
    def cached_psk(self, identity: str) -> ResolvedPsk | None:
        """From the cache only. None: the cache cannot vouch (call resolve_psk to fill it).

        Raises Unauthenticated when the cache knows the identity is not valid.
        """
        entry = self._cached(CredentialKind.PSK, identity)
        if entry is None:
            return None
        assert entry.identity is not None and entry.secret is not None
        return ResolvedPsk(entry.identity, entry.secret)

    def cached_cert(
        self, fingerprint: str, chain: PeerChain | None = None
    ) -> DeviceIdentity | None:
        """From the cache only: the certificate's device, if the cache holds both its
        registration and its tenant's trust (None: call resolve_cert to fill it).

        Raises Unauthenticated when the cache knows the certificate is not valid, or (with
        ``chain``) that the chain does not end in one of the tenant's CAs (FOREIGN_CA).
        """
        entry = self._cached(CredentialKind.X509, fingerprint)
        if entry is None:
            return None
        assert entry.identity is not None
        trust = self.cache.get_trust(entry.identity.tenant_id, self._clock())
        if trust is None:
            return None
        if chain is not None:
            self._check_chain(entry, trust, chain)
        return entry.identity

    def _api_key_lookup(self, raw: str) -> str:
        """The key's lookup (its hash), or the refusal of a malformed key."""
        if not api_keys.is_well_formed(raw):
            raise self._refuse(CredentialKind.API_KEY, Cause.MALFORMED)
        return api_keys.hash_key(raw)

    def _cached(self, kind: CredentialKind, lookup: str) -> CacheEntry | None:
        now = self._clock()
        entry = self.cache.get(kind, lookup, now)
        if entry is None:
            return None
        if entry.identity is None:
            raise self._refuse(kind, Cause.UNKNOWN_OR_REVOKED, "cached")
        if entry.credential_expired(now):
            raise self._refuse(kind, Cause.OVERLAP_ENDED)
        return entry

    # -- bus -------------------------------------------------------------------------------
    def apply_event(self, event: CredentialEvent) -> None:
        self._epoch += 1
        if event.type is EventType.TRUST:
            self.cache.evict_trust(event.tenant_id)
        elif event.type is EventType.EXPIRES and event.expires_at is not None:
            self.cache.set_credential_expiry(event.kind, event.lookup, event.expires_at)
        else:  # created or revoked: the next lookup asks Redis
            self.cache.evict(event.kind, event.lookup)

    def drop_cache(self) -> None:
        self._epoch += 1
        self.cache.clear()

    def begin_outage(self, gap_started_at: float) -> int:
        """A bus gap: stop trusting the cache; keep fallbacks under the outage grace."""
        self._epoch += 1
        kept = self.cache.suspend(gap_started_at, self.outage_grace_s)
        if self.outage_grace_s > 0:
            log.warning("resolver.outage_grace", kept=kept, grace_s=self.outage_grace_s)
        return kept

    def end_outage(self) -> None:
        self.cache.end_outage()

    async def redis_answers(self) -> bool:
        """Whether Redis answers a lookup now (a key that never exists, in the registry's
        slot: on a cluster, the master that matters)."""
        try:
            await self.lookups.get(self._keys.lookup(CredentialKind.API_KEY, "-probe-"))
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            return False
        return True

    # -- internals -------------------------------------------------------------------------
    def _check_chain(self, entry: CacheEntry, trust: TenantTrust, chain: PeerChain) -> None:
        if not trust.admits(chain, proven_self_signed=entry.proven_self_signed):
            raise self._refuse(CredentialKind.X509, Cause.FOREIGN_CA)

    async def _tenant_trust(self, tenant_id: str, *, fallback: bool = True) -> TenantTrust:
        cached = self.cache.get_trust(tenant_id, self._clock())
        if cached is not None:
            return cached
        epoch = self.cache.trust_epoch
        cas_key = self._keys.tenant_cas(tenant_id)
        settings_key = self._keys.tenant_settings(tenant_id)
        try:
            cas = await self.lookups.read(cas_key, "ZRANGE", cas_key, 0, -1)
            allow = await self.lookups.read(settings_key, "HGET", settings_key, "allow_self_signed")
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            metrics.redis_error("resolver")
            log.warning("resolver.redis_unreachable", kind="trust", error=str(exc))
            kept = self.cache.trust_fallback(tenant_id) if fallback else None
            if kept is not None:
                return kept
            raise Unavailable("credential store unreachable", reason="redis unreachable") from None
        trust = TenantTrust(frozenset(str(fp) for fp in cas), allow == "1")
        self.cache.put_trust(tenant_id, trust, self._clock(), epoch=epoch)
        return trust

    async def _resolve(
        self, kind: CredentialKind, lookup: str, *, fallback: bool = True
    ) -> CacheEntry:
        cached = self._cached(kind, lookup)
        if cached is not None:
            return cached
        key = self._keys.lookup(kind, lookup)
        try:
            epoch = self._epoch
            raw = await self.lookups.get(key)
            if self._epoch != epoch:
                # A bus event (a revocation?) arrived while the read was in flight; its answer
                # may predate the event, and would be cached after it: read again.
                raw = await self.lookups.get(key)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            # Unreachable, timed out, or a cluster that cannot serve the slot: fail closed,
            # unless the outage grace vouches for a credential verified just before the gap.
            metrics.redis_error("resolver")
            log.warning("resolver.redis_unreachable", kind=kind.value, error=str(exc))
            kept = self.cache.fallback(kind, lookup) if fallback else None
            if kept is not None and kept.identity is not None:
                if kept.credential_expired(self._clock()):
                    raise self._refuse(kind, Cause.OVERLAP_ENDED, "outage grace") from None
                metrics.outage_grace_used(kind.value)
                return kept
            raise Unavailable("credential store unreachable", reason="redis unreachable") from None
        now = self._clock()
        if raw is not None and is_pending(raw):
            raw = await self._first_used(key, raw, now)
        if raw is None:
            self.cache.put_negative(kind, lookup, now)
            raise self._refuse(kind, Cause.UNKNOWN_OR_REVOKED)
        try:
            value = json.loads(raw)
            identity = DeviceIdentity(value["t"], value["d"], kind, value["c"])
            expires_at = value.get("x")
            proven_self_signed = bool(value.get("ss")) and bool(value.get("p"))
            secret = None
            if kind is CredentialKind.PSK:
                if self._keyring is None:
                    raise FailedPrecondition("no PSK key-encryption key configured")
                secret = self._keyring.open(value["t"], lookup, psk.SealedPsk.from_json(value))
            if kind is CredentialKind.X509 and now >= float(value.get("na", float("inf"))):
                raise self._refuse(kind, Cause.CERTIFICATE_EXPIRED)
        except (KeyError, TypeError, ValueError, FailedPrecondition) as exc:
            log.error("resolver.corrupt_record", kind=kind.value, error=str(exc))
            raise self._refuse(kind, Cause.CORRUPT_RECORD) from None
        if expires_at is not None and now >= float(expires_at):
            raise self._refuse(kind, Cause.OVERLAP_ENDED)
        return self.cache.put(
            kind,
            lookup,
            identity,
            now,
            secret=secret,
            credential_expires_at=None if expires_at is None else float(expires_at),
            proven_self_signed=proven_self_signed,
        )

    async def _first_used(self, key: str, raw: str, now: float) -> str | None:
        """A credential a claim issued authenticates for the first time: from now on a retry
        of its enrolment is refused (``store/first_use.py``). Redis errors fail closed."""
        try:
            return await self._first_use.mark(key, raw, now)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            metrics.redis_error("resolver")
            log.warning("resolver.redis_unreachable", kind="first_use", error=str(exc))
            raise Unavailable("credential store unreachable", reason="redis unreachable") from None

    @staticmethod
    def _refuse(kind: CredentialKind, cause: Cause, detail: str = "") -> Unauthenticated:
        # The cause goes to the log and the metrics, never to the peer.
        log.info("resolver.refused", kind=kind.value, cause=cause.label, detail=detail)
        metrics.resolver_refused(kind.value, cause)
        return Unauthenticated(reason=f"{cause.label} {detail}".strip(), cause=cause)
