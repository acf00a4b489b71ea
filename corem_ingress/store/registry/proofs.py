"""Proof-of-possession challenges: issued to one tenant, usable once, expiring (Redis TTL).

The challenge is deleted when it is presented (``GETDEL``), before the signature is
checked: a wrong proof uses it up too, so it cannot be guessed at. A tenant holds at most
``MAX_OUTSTANDING_CHALLENGES`` unused ones at a time (an operator token cannot fill Redis).
"""

from __future__ import annotations

import math

from corem_ingress.core import proof
from corem_ingress.core.errors import InvalidArgument, ResourceExhausted
from corem_ingress.core.identity import check_tenant_id
from corem_ingress.store.registry.base import RegistryBase
from corem_ingress.store.registry.records import IssuedChallenge

#: Unused, unexpired challenges one tenant may hold (a production line registering devices
#: with proof asks for one per device, each used within seconds).
MAX_OUTSTANDING_CHALLENGES = 1000


class ProofRegistry(RegistryBase):
    async def new_challenge(self, tenant_id: str, *, actor: str) -> IssuedChallenge:
        check_tenant_id(tenant_id)

        async def op() -> IssuedChallenge:
            token, text = proof.new_challenge(tenant_id)
            ttl, now = proof.CHALLENGE_TTL_S, self._clock()
            oldest = await self._scripts.challenge_new(
                tenant_id=tenant_id,
                token=token,
                now=now,
                ttl_s=ttl,
                max_outstanding=MAX_OUTSTANDING_CHALLENGES,
            )
            if oldest is not None:
                raise ResourceExhausted(
                    f"tenant holds {MAX_OUTSTANDING_CHALLENGES} unused challenges: use or "
                    "let them expire",
                    retry_after_s=math.ceil(oldest - now),
                )
            return IssuedChallenge(text, now + ttl)

        return await self._audited(actor, tenant_id, "challenges.create", "", op)

    async def _check_proof(self, tenant_id: str, given: proof.Proof, public_key: object) -> None:
        """Use up the challenge, then verify the proof against ``public_key``."""
        token = proof.challenge_token(given.challenge, tenant_id)
        owner = await self._r.getdel(self.keys.challenge(token))
        if owner is not None:
            await self._r.zrem(self.keys.tenant_challenges(tenant_id), token)
        if owner != tenant_id:
            raise InvalidArgument("challenge is unknown, expired or already used")
        given.verify(public_key)
