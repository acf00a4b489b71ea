"""API keys: create, rotate (the old key keeps working for an overlap that Redis itself
ends), revoke. Only the key's SHA-256 is stored; the raw key is returned once."""

from __future__ import annotations

import math

from corem_ingress.core import api_keys
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind, check_tenant_id
from corem_ingress.store.registry.base import RegistryBase
from corem_ingress.store.registry.records import (
    CredentialRecord,
    CredentialWrite,
    IssuedApiKey,
    lookup_value,
    record_fields,
)


def api_key_write(
    tenant_id: str, device_id: str, now: float
) -> tuple[IssuedApiKey, CredentialWrite]:
    """A fresh key for ``device_id``: what the caller gets once, and what is stored."""
    raw = api_keys.generate()
    key_id = api_keys.new_key_id()
    lookup = api_keys.hash_key(raw)
    kind = CredentialKind.API_KEY
    write = CredentialWrite(
        kind,
        lookup,
        key_id,
        lookup_value(tenant_id, device_id, key_id),
        record_fields(kind, tenant_id, device_id, key_id, lookup, now),
    )
    return IssuedApiKey(key_id, raw, device_id), write


class ApiKeyRegistry(RegistryBase):
    async def create_api_key(self, tenant_id: str, device_id: str, *, actor: str) -> IssuedApiKey:
        check_tenant_id(tenant_id)

        async def op() -> IssuedApiKey:
            await self.get_device(tenant_id, device_id)
            now = self._clock()
            issued, write = api_key_write(tenant_id, device_id, now)
            await self._add_credential(tenant_id, device_id, write, now)
            return issued

        return await self._audited(actor, tenant_id, "keys.create", f"device={device_id}", op)

    async def rotate_api_key(
        self,
        tenant_id: str,
        key_id: str,
        *,
        actor: str,
        device_id: str | None = None,
        overlap: float | None = None,
    ) -> IssuedApiKey:
        check_tenant_id(tenant_id)
        if overlap is None:
            overlap = self.api_key_overlap
        if not (isinstance(overlap, int | float) and math.isfinite(overlap)) or overlap < 0:
            raise InvalidArgument("overlap must be a number of seconds >= 0")
        if overlap > self.api_key_overlap_max:
            raise InvalidArgument(
                f"overlap must not exceed the configured maximum of {self.api_key_overlap_max:g} s"
            )

        async def op() -> IssuedApiKey:
            old = await self._active_credential(
                tenant_id, key_id, CredentialKind.API_KEY, device_id
            )
            now = self._clock()
            issued, write = api_key_write(tenant_id, old.device_id, now)
            expires_at = now + overlap if overlap > 0 else None
            await self._rotate_credential(tenant_id, old, write, now, expires_at)
            return IssuedApiKey(issued.key_id, issued.api_key, old.device_id, key_id, expires_at)

        return await self._audited(actor, tenant_id, "keys.rotate", f"key_id={key_id}", op)

    async def revoke_api_key(
        self, tenant_id: str, key_id: str, *, actor: str, device_id: str | None = None
    ) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            rec = await self._active_credential(
                tenant_id, key_id, CredentialKind.API_KEY, device_id
            )
            return await self._revoke_credential(rec)

        return await self._audited(actor, tenant_id, "keys.revoke", f"key_id={key_id}", op)
