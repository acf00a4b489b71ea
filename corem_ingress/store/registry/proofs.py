"""Proof-of-possession challenges: issued to one tenant, usable once, expiring (Redis TTL).

The challenge is deleted when it is presented (``GETDEL``), before the signature is
checked: a wrong proof uses it up too, so it cannot be guessed at.
"""

from __future__ import annotations

from corem_ingress.core import proof
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import check_tenant_id
from corem_ingress.store.registry.base import RegistryBase
from corem_ingress.store.registry.records import IssuedChallenge


class ProofRegistry(RegistryBase):
    async def new_challenge(self, tenant_id: str, *, actor: str) -> IssuedChallenge:
        check_tenant_id(tenant_id)

        async def op() -> IssuedChallenge:
            token, text = proof.new_challenge(tenant_id)
            ttl = proof.CHALLENGE_TTL_S
            await self._r.set(self.keys.challenge(token), tenant_id, ex=ttl, nx=True)
            return IssuedChallenge(text, self._clock() + ttl)

        return await self._audited(actor, tenant_id, "challenges.create", "", op)

    async def _check_proof(self, tenant_id: str, given: proof.Proof, public_key: object) -> None:
        """Use up the challenge, then verify the proof against ``public_key``."""
        token = proof.challenge_token(given.challenge, tenant_id)
        owner = await self._r.getdel(self.keys.challenge(token))
        if owner != tenant_id:
            raise InvalidArgument("challenge is unknown, expired or already used")
        given.verify(public_key)
