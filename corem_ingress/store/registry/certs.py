"""X.509 device certificates: only the public certificate's SHA-256 fingerprint (the
identity anchor for mTLS and DTLS) and its metadata are stored."""

from __future__ import annotations

from corem_ingress.core import certs
from corem_ingress.core.errors import InvalidArgument, NotFound
from corem_ingress.core.identity import CredentialKind, check_tenant_id
from corem_ingress.store.registry.base import RegistryBase
from corem_ingress.store.registry.records import (
    CredentialRecord,
    CredentialWrite,
    lookup_value,
    page,
    record_fields,
)


def cert_write(tenant_id: str, device_id: str, info: certs.CertInfo, now: float) -> CredentialWrite:
    fp = info.fingerprint
    kind = CredentialKind.X509
    return CredentialWrite(
        kind,
        fp,
        fp,
        lookup_value(tenant_id, device_id, fp, na=info.not_after, ss=info.self_signed),
        record_fields(
            kind,
            tenant_id,
            device_id,
            fp,
            fp,
            now,
            subject=info.subject,
            issuer=info.issuer,
            serial=info.serial,
            not_before=repr(info.not_before),
            not_after=repr(info.not_after),
            key_type=info.key_type,
            self_signed="1" if info.self_signed else "0",
        ),
        unique=True,
    )


class CertRegistry(RegistryBase):
    async def register_cert(
        self, tenant_id: str, device_id: str, pem: str | bytes, *, actor: str
    ) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            await self.get_device(tenant_id, device_id)
            now = self._clock()
            write = cert_write(tenant_id, device_id, certs.parse_device_cert(pem, now=now), now)
            await self._add_credential(tenant_id, device_id, write, now)
            rec = await self._credential(write.credential_id)
            assert rec is not None
            return rec

        return await self._audited(actor, tenant_id, "certs.register", f"device={device_id}", op)

    async def revoke_cert(
        self, tenant_id: str, fingerprint: str, *, actor: str
    ) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            try:
                certs.check_fingerprint(fingerprint)
            except InvalidArgument:
                raise NotFound("certificate not found") from None
            rec = await self._active_credential(tenant_id, fingerprint, CredentialKind.X509, None)
            return await self._revoke_credential(rec)

        return await self._audited(
            actor, tenant_id, "certs.revoke", f"fingerprint={fingerprint}", op
        )

    async def list_certs(
        self,
        tenant_id: str,
        *,
        device_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[CredentialRecord], str | None]:
        check_tenant_id(tenant_id)
        start, limit = page(limit, cursor)
        if device_id is not None:
            records = [
                r
                for r in await self.credentials(tenant_id, device_id)
                if r.kind is CredentialKind.X509
            ]
            found = records[start : start + limit + 1]
        else:
            fps = await self._wrap(
                self._r.zrange(self.keys.tenant_certs(tenant_id), start, start + limit)
            )
            found = [r for r in [await self._credential(fp) for fp in fps] if r is not None]
        more = len(found) > limit
        return found[:limit], (str(start + limit) if more else None)
