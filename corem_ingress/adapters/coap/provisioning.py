"""Provisioning by claim over CoAP on the DTLS port (docs/provisioning.md).

A device of a batch holds a *psk claim*: a PSK whose identity starts with ``claim.``. Its
DTLS handshake is served by ``ClaimCredentials``, which stands in front of the resolver
for the DTLS server: claim identities are looked up in the registry's claim key space
(never the device resolver's), everything else goes to the resolver unchanged.

The session such a handshake opens has no device credential (``DeviceSession.credential``
is None), so the device site and every mounted resource (LwM2M ``/rd``) answer 4.01: a
claim can only ``POST /provision`` with ``{"hardware_id": …}`` (JSON), answered 2.01
Created (new device) or 2.04 Changed (a retry before first use re-issued the credential)
with the device's own credential as JSON, once; 4.01 (claim unknown, revoked, expired),
4.03 (no uses left), 4.09 (already used, or a device this claim did not enrol), 4.29
(provisioning rate), 4.00 (bad body), 5.03 (store unreachable). The claim is resolved
again for each request: a revocation stops the next one.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.endpoint import error_response, response
from corem_ingress.adapters.dtls.events import Credential
from corem_ingress.core.claims import is_claim_psk_identity, parse_enrol_request
from corem_ingress.core.errors import IngressError, Unauthenticated
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain
from corem_ingress.resolver import ResolvedPsk

if TYPE_CHECKING:
    from corem_ingress.resolver import Resolver
    from corem_ingress.services import Services

log = structlog.get_logger("corem.coap")

PROVISION_PATH = ("provision",)
CF_JSON = 50
#: How long a resolved claim PSK serves handshakes (the requests re-resolve it anyway).
CLAIM_CACHE_TTL_S = 10.0
CLAIM_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    resolved: ResolvedPsk | None  # None: refused (unknown, revoked, expired)
    until: float


class ClaimCredentials:
    """The DTLS server's credentials: claim PSK identities from the registry, the rest from
    the resolver (same synchronous/asynchronous contract as ``Resolver``)."""

    def __init__(
        self, resolver: Resolver, services: Services, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolver = resolver
        self._registry = services.registry
        self._clock = clock
        self._claims: OrderedDict[str, _Entry] = OrderedDict()

    # -- the synchronous cache (handshake callbacks) ------------------------------------------
    def cached_psk(self, identity: str) -> ResolvedPsk | None:
        if not is_claim_psk_identity(identity):
            return self._resolver.cached_psk(identity)
        entry = self._claims.get(identity)
        if entry is None or entry.until < self._clock():
            return None
        if entry.resolved is None:
            raise Unauthenticated(reason="claim unknown, revoked or expired")
        return entry.resolved

    def cached_cert(
        self, fingerprint: str, chain: PeerChain | None = None
    ) -> DeviceIdentity | None:
        return self._resolver.cached_cert(fingerprint, chain)

    # -- the asynchronous path (fills the caches) ---------------------------------------------
    async def resolve_psk(self, identity: str) -> Any:
        if not is_claim_psk_identity(identity):
            return await self._resolver.resolve_psk(identity)
        resolved: ResolvedPsk | None = None
        try:
            claim = await self._registry.resolve_claim_psk(identity)
        except Unauthenticated:
            pass
        else:
            assert claim.psk is not None
            who = DeviceIdentity(
                claim.tenant_id, claim_device(claim.claim_id), CredentialKind.PSK, ""
            )
            resolved = ResolvedPsk(who, claim.psk)
        self._claims[identity] = _Entry(resolved, self._clock() + CLAIM_CACHE_TTL_S)
        self._claims.move_to_end(identity)
        while len(self._claims) > CLAIM_CACHE_MAX:
            self._claims.popitem(last=False)
        return resolved

    async def resolve_cert(self, fingerprint: str, *, chain: None, der: bytes | None = None) -> Any:
        return await self._resolver.resolve_cert(fingerprint, chain=chain, der=der)


def claim_device(claim_id: str) -> str:
    """The stand-in device id of a claim's session: never a device's (those are UUIDs)."""
    return f"claim:{claim_id}"


def is_claim_credential(credential: Credential | None) -> bool:
    return (
        credential is not None
        and credential.kind is CredentialKind.PSK
        and is_claim_psk_identity(credential.lookup)
    )


async def provision(services: Services, claim_identity: str, msg: Message) -> Message:
    """``POST /provision`` of a claim session (module doc)."""
    if tuple(msg.opt.uri_path) != PROVISION_PATH:
        return error_response("4.01")  # a claim opens nothing else
    if msg.code != Code.POST:
        return response(Code.METHOD_NOT_ALLOWED)
    registry = services.registry
    cfg = services.config.provisioning
    try:
        claim = await registry.resolve_claim_psk(claim_identity)
        await registry.check_provisioning_rate(
            claim, per_claim=cfg.claim_rate_per_minute, per_tenant=cfg.tenant_rate_per_minute
        )
        enrolled = await registry.enrol(claim, parse_enrol_request(msg.payload))
    except IngressError as exc:
        reply = error_response(exc.coap_code, json.dumps(exc.to_json()).encode())
        reply.opt.content_format = CF_JSON
        if exc.code == "RESOURCE_EXHAUSTED":
            reply.opt.max_age = 60
        return reply
    code = Code.CREATED if enrolled.result.created else Code.CHANGED
    reply = response(code, json.dumps(enrolled.to_json(), separators=(",", ":")).encode())
    reply.opt.content_format = CF_JSON
    return reply
