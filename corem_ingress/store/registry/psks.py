"""PSKs: generated or assigned, stored sealed under the KEK ring (never in clear),
rotated (the old one stops at once), revoked, and re-sealed after a KEK rotation."""

from __future__ import annotations

import json

import redis.exceptions

from corem_ingress import metrics
from corem_ingress.core import psk
from corem_ingress.core.errors import FailedPrecondition, NotFound
from corem_ingress.core.identity import CredentialKind, check_tenant_id
from corem_ingress.store.registry.base import RegistryBase
from corem_ingress.store.registry.records import (
    CredentialRecord,
    CredentialWrite,
    IssuedPsk,
    lookup_value,
    record_fields,
)


class PskRegistry(RegistryBase):
    def _new_psk(
        self,
        tenant_id: str,
        hardware_id: str,
        device_id: str,
        identity: str | None,
        key: bytes | None,
    ) -> IssuedPsk:
        self._require_keyring()
        identity = (
            psk.check_tenant_identity(tenant_id, identity)
            if identity is not None
            else psk.generate_identity(tenant_id, hardware_id)
        )
        # An assigned key must be long enough and not trivially guessable, whichever
        # entry point assigned it (admin API, CLI, library callers).
        key = (
            psk.check_entropy(psk.check_psk(key, min_bytes=self.psk_min_bytes))
            if key is not None
            else psk.generate_psk(self.psk_min_bytes)
        )
        return IssuedPsk(psk.new_psk_credential_id(), identity, key, device_id)

    def _psk_write(
        self, tenant_id: str, device_id: str, issued: IssuedPsk, now: float
    ) -> CredentialWrite:
        sealed = self._require_keyring().seal(tenant_id, issued.psk_identity, issued.psk)
        kind = CredentialKind.PSK
        return CredentialWrite(
            kind,
            issued.psk_identity,
            issued.credential_id,
            lookup_value(tenant_id, device_id, issued.credential_id, **sealed.to_json()),
            record_fields(
                kind, tenant_id, device_id, issued.credential_id, issued.psk_identity, now
            ),
        )

    async def _active_psk(self, tenant_id: str, device_id: str) -> CredentialRecord:
        device = await self.get_device(tenant_id, device_id)
        if device.credential_kind is not CredentialKind.PSK:
            raise FailedPrecondition("device does not use PSK credentials")
        for rec in await self.credentials(tenant_id, device_id):
            if rec.kind is CredentialKind.PSK and rec.status == "active":
                return rec
        raise NotFound("device has no active PSK")

    async def rotate_psk(
        self,
        tenant_id: str,
        device_id: str,
        *,
        actor: str,
        psk_identity: str | None = None,
        psk_bytes: bytes | None = None,
    ) -> IssuedPsk:
        """A new PSK (and identity, unless one is given); the old one stops at once.

        A device whose PSK was revoked gets a fresh one here too.
        """
        check_tenant_id(tenant_id)

        async def op() -> IssuedPsk:
            device = await self.get_device(tenant_id, device_id)
            if device.credential_kind is not CredentialKind.PSK:
                raise FailedPrecondition("device does not use PSK credentials")
            now = self._clock()
            issued = self._new_psk(
                tenant_id, device.hardware_id, device_id, psk_identity, psk_bytes
            )
            write = self._psk_write(tenant_id, device_id, issued, now)
            try:
                old = await self._active_psk(tenant_id, device_id)
            except NotFound:
                await self._add_credential(tenant_id, device_id, write, now)
            else:
                await self._rotate_credential(tenant_id, old, write, now, None)
            return issued

        return await self._audited(actor, tenant_id, "psk.rotate", f"device={device_id}", op)

    async def revoke_psk(self, tenant_id: str, device_id: str, *, actor: str) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            return await self._revoke_credential(await self._active_psk(tenant_id, device_id))

        return await self._audited(actor, tenant_id, "psk.revoke", f"device={device_id}", op)

    async def reseal_psks(self, *, actor: str) -> int:
        """Re-seal every stored PSK under the active KEK (after adding one); returns the count."""
        ring = self._require_keyring()
        count = 0
        pattern = self.keys.lookup(CredentialKind.PSK, "*")
        async for key in self._r.scan_iter(match=pattern, count=500):
            raw = await self._r.get(key)
            if raw is None:
                continue
            value = json.loads(raw)
            sealed = psk.SealedPsk.from_json(value)
            if sealed.kid == ring.active_kid:
                continue
            identity = key[len(self.keys.lookup(CredentialKind.PSK, "")) :]
            secret = ring.open(value["t"], identity, sealed)
            value.update(ring.seal(value["t"], identity, secret).to_json())
            # Only replace the exact value we read: a concurrent revoke or rotate wins.
            async with self._r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if await pipe.get(key) != raw:
                        await pipe.unwatch()
                        continue
                    pipe.multi()
                    pipe.set(key, json.dumps(value, separators=(",", ":")), keepttl=True)
                    await pipe.execute()
                    count += 1
                except redis.exceptions.WatchError:
                    continue
        metrics.credential_operation("psk.reseal", "OK")
        await self._audit(actor, "*", "psk.reseal", f"count={count}", "OK")
        return count
