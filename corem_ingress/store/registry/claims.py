"""Provisioning by claim: claims (create / list / revoke) and enrolments, atomic in Redis.

The rules are ``core/claims.py``; this module reads the state they decide on (the claim,
the enrolment of the (tenant, hardware_id), whether a device holds that hardware_id),
and carries the decision out in one Lua step that checks the state it was decided on
('stale' otherwise: read and decide again). The claim's own secret lives under
``{P}:claimauth:…``, which the device resolver never reads: a claim authenticates
provisioning requests and nothing else.

Every credential a claim issues carries a pending mark (``pe``) in its lookup value; the
resolver drops it at the credential's first successful authentication
(``store/first_use.py``), and from then on a retry of the enrolment is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from corem_ingress.core import claims, psk
from corem_ingress.core.causes import Cause
from corem_ingress.core.claims import (
    PENDING_FIELD,
    Action,
    Claim,
    ClaimKind,
    ClaimStatus,
    Enrolment,
)
from corem_ingress.core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from corem_ingress.core.events import EventType
from corem_ingress.core.identity import (
    CredentialKind,
    check_hardware_id,
    check_tenant_id,
    new_device_id,
)
from corem_ingress.store.registry.api_keys import api_key_write
from corem_ingress.store.registry.devices import DeviceRegistry
from corem_ingress.store.registry.records import (
    CredentialWrite,
    IssuedApiKey,
    IssuedPsk,
    ProvisionResult,
    page,
)
from corem_ingress.store.registry.scripts import _Script

#: Read-decide-write rounds before a contended enrolment gives up (503, retry).
MAX_ROUNDS = 16
#: Fixed window of the provisioning rate limits.
RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class IssuedClaim:
    """A new claim and its secret, returned once."""

    claim: Claim
    claim_key: str | None = None
    psk: bytes | None = None

    def to_json(self, now: float) -> dict[str, object]:
        out = self.claim.to_json(now)
        if self.claim_key is not None:
            out["claim_key"] = self.claim_key
        if self.psk is not None:
            out["psk"] = self.psk.hex()
        return out


@dataclass(frozen=True, slots=True)
class ResolvedClaim:
    """A presented claim secret: the claim's tenant and id (and a PSK claim's key)."""

    tenant_id: str
    claim_id: str
    psk: bytes | None = None


@dataclass(frozen=True, slots=True)
class Enrolled:
    """The outcome of one enrolment request: the device and its (new) secret."""

    result: ProvisionResult
    reissued: bool

    def to_json(self) -> dict[str, object]:
        out = self.result.to_json()
        out["reissued"] = self.reissued
        return out


class _ClaimScripts:
    def __init__(self, r: Any) -> None:
        self.create = _Script(r, "claim_create")
        self.revoke = _Script(r, "claim_revoke")
        self.issue = _Script(r, "claim_issue")
        self.reissue = _Script(r, "claim_reissue")
        self.rate = _Script(r, "provisioning_rate")


class ClaimRegistry(DeviceRegistry):
    _claim_scripts_: _ClaimScripts | None = None

    @property
    def _claim_scripts(self) -> _ClaimScripts:
        if self._claim_scripts_ is None:
            self._claim_scripts_ = _ClaimScripts(self._r)
        return self._claim_scripts_

    # -- operators: claims -----------------------------------------------------------------
    async def create_claim(
        self,
        tenant_id: str,
        kind: ClaimKind,
        credential_kind: CredentialKind,
        *,
        max_uses: int,
        expires_at: float | None,
        actor: str,
        psk_bytes: bytes | None = None,
    ) -> IssuedClaim:
        """``psk_bytes``: a psk claim's key assigned by the operator (many device SDKs and
        libcoap take PSKs as text); generated otherwise."""
        check_tenant_id(tenant_id)
        if psk_bytes is not None and kind is not ClaimKind.PSK:
            raise InvalidArgument("a PSK can only be given for a claim of kind psk")
        now = self._clock()
        claims.check_new_claim(kind, credential_kind, max_uses, expires_at, now=now)
        if credential_kind is CredentialKind.PSK or kind is ClaimKind.PSK:
            self._require_keyring()
        claim_id = claims.new_claim_id()
        key: str | None = None
        secret: bytes | None = None
        if kind is ClaimKind.API_KEY:
            key = claims.generate_claim_key()
            lookup = claims.hash_claim_key(key)
            value = {"t": tenant_id, "c": claim_id}
        else:
            lookup = claims.claim_psk_identity(claim_id)
            secret = (
                psk.check_entropy(psk.check_psk(psk_bytes, min_bytes=self.psk_min_bytes))
                if psk_bytes is not None
                else psk.generate_psk(self.psk_min_bytes)
            )
            sealed = self._require_keyring().seal(tenant_id, lookup, secret)
            value = {"t": tenant_id, "c": claim_id, **sealed.to_json()}
        claim = Claim(
            claim_id,
            tenant_id,
            kind,
            credential_kind,
            max_uses,
            0,
            expires_at,
            ClaimStatus.ACTIVE,
            now,
            lookup=lookup,
        )

        async def op() -> IssuedClaim:
            record = claim.to_record()
            status = await self._claim_scripts.create(
                [
                    self.keys.claim(claim_id),
                    self.keys.tenant_claims(tenant_id),
                    self.keys.claim_auth(kind.value, lookup),
                ],
                [
                    claim_id,
                    repr(now),
                    json.dumps(value, separators=(",", ":")),
                    "0" if expires_at is None else str(math.ceil(expires_at * 1000)),
                    *(item for pair in record.items() for item in pair),
                ],
            )
            if status != "ok":
                raise AlreadyExists("claim already exists")
            return IssuedClaim(claim, key, secret)

        return await self._audited(actor, tenant_id, "claims.create", f"claim={claim_id}", op)

    async def get_claim(self, tenant_id: str, claim_id: str) -> Claim:
        check_tenant_id(tenant_id)
        try:
            claims.check_claim_id(claim_id)
        except InvalidArgument:
            raise NotFound("claim not found") from None
        claim = await self._wrap(self._claim(claim_id))
        if claim is None or claim.tenant_id != tenant_id:
            raise NotFound("claim not found")
        return claim

    async def list_claims(
        self, tenant_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Claim], str | None]:
        check_tenant_id(tenant_id)
        start, limit = page(limit, cursor)
        ids = await self._wrap(
            self._r.zrange(self.keys.tenant_claims(tenant_id), start, start + limit)
        )
        found = []
        for claim_id in ids[:limit]:
            claim = await self._wrap(self._claim(claim_id))
            if claim is not None:
                found.append(claim)
        return found, (str(start + limit) if len(ids) > limit else None)

    async def revoke_claim(self, tenant_id: str, claim_id: str, *, actor: str) -> Claim:
        """Now, on every node: the claim's secret stops working; enrolled devices keep theirs."""
        check_tenant_id(tenant_id)

        async def op() -> Claim:
            claim = await self.get_claim(tenant_id, claim_id)
            status = await self._claim_scripts.revoke(
                [self.keys.claim(claim_id), self.keys.claim_auth(claim.kind.value, claim.lookup)],
                [tenant_id, repr(self._clock())],
            )
            if status == "not_found":
                raise NotFound("claim not found")
            return await self.get_claim(tenant_id, claim_id)

        return await self._audited(actor, tenant_id, "claims.revoke", f"claim={claim_id}", op)

    async def _claim(self, claim_id: str) -> Claim | None:
        data = await self._r.hgetall(self.keys.claim(claim_id))
        return Claim.from_record(data) if data else None

    # -- devices: presenting a claim ---------------------------------------------------------
    async def resolve_claim_key(self, raw: str) -> ResolvedClaim:
        """The claim of a ``ck_live_…`` key, or Unauthenticated (unknown, revoked, expired)."""
        if not claims.is_claim_key(raw):
            raise Unauthenticated(reason="claim key malformed")
        return await self._resolve_claim(ClaimKind.API_KEY, claims.hash_claim_key(raw))

    async def resolve_claim_psk(self, identity: str) -> ResolvedClaim:
        """The claim of a claim PSK identity (with its key), or Unauthenticated."""
        if not claims.is_claim_psk_identity(identity):
            raise Unauthenticated(reason="not a claim PSK identity")
        return await self._resolve_claim(ClaimKind.PSK, identity)

    async def _resolve_claim(self, kind: ClaimKind, lookup: str) -> ResolvedClaim:
        raw = await self._wrap(self._r.get(self.keys.claim_auth(kind.value, lookup)))
        if raw is None:
            raise Unauthenticated(reason="claim unknown, revoked or expired")
        try:
            value = json.loads(raw)
            tenant_id, claim_id = str(value["t"]), str(value["c"])
            key = None
            if kind is ClaimKind.PSK:
                key = self._require_keyring().open(
                    tenant_id, lookup, psk.SealedPsk.from_json(value)
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise Unauthenticated(reason=f"corrupt claim record: {exc}") from None
        return ResolvedClaim(tenant_id, claim_id, key)

    async def check_provisioning_rate(
        self, resolved: ResolvedClaim, *, per_claim: int, per_tenant: int
    ) -> None:
        """Count this request; ResourceExhausted (429, CoAP 4.29) beyond either limit."""
        if per_claim <= 0 and per_tenant <= 0:
            return
        window, ttl = claims.rate_window(self._clock(), RATE_WINDOW_S)
        counts = await self._wrap(
            self._claim_scripts.rate(
                [
                    self.keys.provisioning_rate(f"claim:{resolved.claim_id}", window),
                    self.keys.provisioning_rate(f"tenant:{resolved.tenant_id}", window),
                ],
                [str(ttl)],
            )
        )
        by_claim, by_tenant = int(counts[0]), int(counts[1])
        if claims.over_rate(by_claim, per_claim) or claims.over_rate(by_tenant, per_tenant):
            scope = "claim" if claims.over_rate(by_claim, per_claim) else "tenant"
            await self._audit(
                f"claim:{resolved.claim_id}",
                resolved.tenant_id,
                "claims.enrol",
                f"rate={scope}",
                ResourceExhausted.code,
            )
            raise ResourceExhausted(
                f"too many provisioning requests for this {scope}: retry later",
                retry_after_s=ttl,
                reason=f"provisioning rate ({scope})",
                cause=Cause.PROVISIONING_RATE,
            )

    async def provisioning_rate_full(
        self, resolved: ResolvedClaim, *, per_claim: int, per_tenant: int
    ) -> bool:
        """Whether the claim's or tenant's current window is already full (counts nothing:
        for refusing a connection before any request, MQTT's CONNACK quota code)."""
        window, _ttl = claims.rate_window(self._clock(), RATE_WINDOW_S)
        by_claim, by_tenant = await self._wrap(
            self._r.mget(
                self.keys.provisioning_rate(f"claim:{resolved.claim_id}", window),
                self.keys.provisioning_rate(f"tenant:{resolved.tenant_id}", window),
            )
        )
        return claims.over_rate(int(by_claim or 0) + 1, per_claim) or claims.over_rate(
            int(by_tenant or 0) + 1, per_tenant
        )

    async def enrol(self, resolved: ResolvedClaim, hardware_id: str) -> Enrolled:
        """The device's own credential for ``hardware_id`` (``core/claims.decide``), audited
        with actor ``claim:<id>``."""
        tenant_id, claim_id = resolved.tenant_id, resolved.claim_id
        check_hardware_id(hardware_id)
        return await self._audited(
            f"claim:{claim_id}",
            tenant_id,
            "claims.enrol",
            f"hardware_id={hardware_id}",
            lambda: self._enrol(tenant_id, claim_id, hardware_id),
        )

    async def _enrol(self, tenant_id: str, claim_id: str, hardware_id: str) -> Enrolled:
        for _ in range(MAX_ROUNDS):
            claim = await self._claim(claim_id)
            if claim is None or claim.tenant_id != tenant_id:
                raise Unauthenticated(reason="claim unknown")
            data = await self._r.hgetall(self.keys.enrolment(tenant_id, hardware_id))
            enrolment = (
                Enrolment(
                    data["claim_id"], data["device_id"], data["credential_id"], "used_at" in data
                )
                if data
                else None
            )
            exists = bool(await self._r.exists(self.keys.hardware(tenant_id, hardware_id)))
            now = self._clock()
            decision = claims.decide(claim, enrolment, device_exists=exists, now=now)
            if decision.refusal is not None:
                raise decision.refusal.error()
            if decision.action is Action.ISSUE:
                done = await self._issue(claim, hardware_id, now)
            else:
                assert enrolment is not None
                done = await self._reissue(claim, hardware_id, enrolment.device_id, now)
            if done is not None:
                return done
        raise Unavailable("provisioning is contended: retry", reason="enrolment rounds exhausted")

    def _claimed_write(
        self, claim: Claim, hardware_id: str, device_id: str, now: float
    ) -> tuple[CredentialWrite, IssuedApiKey | None, IssuedPsk | None]:
        """A fresh credential of the claim's kind, its lookup value marked pending."""
        t = claim.tenant_id
        key: IssuedApiKey | None = None
        issued_psk: IssuedPsk | None = None
        if claim.credential_kind is CredentialKind.API_KEY:
            key, write = api_key_write(t, device_id, now)
        else:
            issued_psk = self._new_psk(t, hardware_id, device_id, None, None)
            write = self._psk_write(t, device_id, issued_psk, now)
        value = json.loads(write.value)
        value[PENDING_FIELD] = hardware_id
        marked = CredentialWrite(
            write.kind,
            write.lookup,
            write.credential_id,
            json.dumps(value, separators=(",", ":")),
            {**write.record, "claim_id": claim.claim_id},
            write.unique,
        )
        return marked, key, issued_psk

    async def _issue(self, claim: Claim, hardware_id: str, now: float) -> Enrolled | None:
        k, t = self.keys, claim.tenant_id
        device_id = new_device_id()
        write, key, issued_psk = self._claimed_write(claim, hardware_id, device_id, now)
        status = await self._claim_scripts.issue(
            [
                k.claim(claim.claim_id),
                k.enrolment(t, hardware_id),
                k.hardware(t, hardware_id),
                k.device(device_id),
                k.tenant_devices(t),
                k.lookup(write.kind, write.lookup),
                k.credential(write.credential_id),
                k.device_credentials(device_id),
            ],
            [
                claim.claim_id,
                t,
                hardware_id,
                device_id,
                claim.credential_kind.value,
                repr(now),
                write.value,
                write.credential_id,
                k.bus_channel,
                self._created_event(t, device_id, write, now),
                *write.record_args(),
            ],
        )
        if status == "stale":
            return None
        if status != "ok":
            raise Unavailable("unexpected registry answer", reason=repr(status))
        device = await self._device(device_id)
        return Enrolled(ProvisionResult(device, True, key, issued_psk), reissued=False)

    async def _reissue(
        self, claim: Claim, hardware_id: str, device_id: str, now: float
    ) -> Enrolled | None:
        k, t = self.keys, claim.tenant_id
        write, key, issued_psk = self._claimed_write(claim, hardware_id, device_id, now)
        reply = await self._claim_scripts.reissue(
            [
                k.claim(claim.claim_id),
                k.enrolment(t, hardware_id),
                k.device(device_id),
                k.lookup(write.kind, write.lookup),
                k.credential(write.credential_id),
                k.device_credentials(device_id),
            ],
            [
                claim.claim_id,
                t,
                repr(now),
                write.value,
                write.credential_id,
                k.bus_channel,
                self._created_event(t, device_id, write, now),
                *write.record_args(),
            ],
        )
        status = str(reply[0])
        if status == "stale":
            return None
        if status != "ok":
            raise Unavailable("unexpected registry answer", reason=repr(status))
        old_id, old_lookup = str(reply[1]), str(reply[2])
        event = self._event(EventType.REVOKED, write.kind, old_lookup, old_id, t, device_id, now)
        await self._r.publish(k.bus_channel, event)
        device = await self._device(device_id)
        return Enrolled(ProvisionResult(device, False, key, issued_psk), reissued=True)
