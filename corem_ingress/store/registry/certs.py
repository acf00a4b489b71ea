"""X.509 device certificates: only the public certificate's SHA-256 fingerprint (the
identity anchor for mTLS and DTLS) and its metadata are stored.

A certificate is accepted only if it chains to one of the tenant's own CAs
(``cas.py``), or, self-signed, with proof of possession of its key in a tenant that
allows self-signed devices. The check runs before anything that depends on whether the
fingerprint is registered elsewhere: another tenant's certificate gets the same answer as
an unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.core import certs, proof, trust
from corem_ingress.core.errors import FailedPrecondition, InvalidArgument, NotFound
from corem_ingress.core.identity import CredentialKind, check_tenant_id
from corem_ingress.store.registry.cas import CaRegistry
from corem_ingress.store.registry.records import (
    CredentialRecord,
    CredentialWrite,
    lookup_value,
    page,
    record_fields,
)


@dataclass(frozen=True, slots=True)
class AdmittedCert:
    """A device certificate that passed the tenant's trust checks."""

    info: certs.CertInfo
    #: The tenant CAs on its verified path (empty for a self-signed certificate).
    anchors: tuple[str, ...]
    #: Registered with proof of possession of its key.
    proven: bool


def cert_write(tenant_id: str, device_id: str, cert: AdmittedCert, now: float) -> CredentialWrite:
    info = cert.info
    fp = info.fingerprint
    kind = CredentialKind.X509
    # "p": proof of possession; the handshake admits a lone self-signed leaf only with it.
    proof_flag = {"p": 1} if cert.proven else {}
    return CredentialWrite(
        kind,
        fp,
        fp,
        lookup_value(
            tenant_id, device_id, fp, na=info.not_after, ss=info.self_signed, **proof_flag
        ),
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
            anchors=",".join(cert.anchors),
            proof="1" if cert.proven else "0",
        ),
        unique=True,
    )


class CertRegistry(CaRegistry):
    async def _admit_cert(
        self, tenant_id: str, pem: str | bytes, given: proof.Proof | None, now: float
    ) -> AdmittedCert:
        """Parse and check a device certificate against the tenant's trust (see module doc)."""
        info, cert = certs.load_device_cert(pem, now=now)
        if info.self_signed:
            settings = await self.tenant_settings(tenant_id)
            if not settings.allow_self_signed:
                raise FailedPrecondition(
                    "self-signed device certificates are not allowed for this tenant"
                )
            if given is None:
                raise InvalidArgument(
                    "a self-signed certificate needs proof of possession of its key"
                )
            await self._check_proof(tenant_id, given, cert.public_key())
            return AdmittedCert(info, (), True)
        cas = await self.tenant_ca_certs(tenant_id)
        anchors = trust.verify_registration_chain(
            cert, {fp: ca for fp, (ca, _) in cas.items()}, now=now
        )
        needs_proof = any(cas[fp][1] for fp in anchors)
        if given is None and needs_proof:
            raise InvalidArgument(
                "this tenant's CA asks for proof of possession of the device's key"
            )
        if given is not None:
            await self._check_proof(tenant_id, given, cert.public_key())
        return AdmittedCert(info, anchors, given is not None)

    async def register_cert(
        self,
        tenant_id: str,
        device_id: str,
        pem: str | bytes,
        *,
        actor: str,
        proof_of_possession: proof.Proof | None = None,
    ) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            device = await self.get_device(tenant_id, device_id)
            if device.credential_kind is not CredentialKind.X509:
                self._check_status("wrong_kind", CredentialKind.X509)  # before any cert work
            now = self._clock()
            admitted = await self._admit_cert(tenant_id, pem, proof_of_possession, now)
            write = cert_write(tenant_id, device_id, admitted, now)
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

    # -- migration -----------------------------------------------------------------------------
    async def check_issuers(self, tenant_id: str | None = None) -> dict[str, object]:
        """Active certificates that the handshake would refuse for their tenant's trust.

        For each: ``problem`` is ``issuer_not_a_tenant_ca`` (registered before tenant CAs
        existed, and its issuer names none of the tenant's CAs), ``issuing_ca_removed``,
        ``self_signed_without_proof`` (registered before proof of possession) or
        ``self_signed_not_allowed``. A certificate registered before tenant CAs whose
        issuer name matches a tenant CA is not listed: the handshake verifies its chain.
        """
        if tenant_id is not None:
            tenants = [check_tenant_id(tenant_id)]
        else:
            pattern = self.keys.tenant_certs("*")
            head, tail = pattern.split("*")
            found = {k[len(head) : -len(tail)] async for k in self._r.scan_iter(match=pattern)}
            tenants = sorted(found)
        problems: list[dict[str, object]] = []
        checked = 0
        for tenant in tenants:
            cas = await self._wrap(self._r.zrange(self.keys.tenant_cas(tenant), 0, -1))
            subjects = {r.info.subject for r in (await self.list_cas(tenant, limit=500))[0]}
            settings = await self.tenant_settings(tenant)
            fps = await self._wrap(self._r.zrange(self.keys.tenant_certs(tenant), 0, -1))
            for fp in fps:
                rec = await self._credential(fp)
                if rec is None or rec.tenant_id != tenant or rec.status != "active":
                    continue
                checked += 1
                problem = _issuer_problem(rec.extra, set(cas), subjects, settings.allow_self_signed)
                if problem is not None:
                    problems.append(
                        {
                            "tenant_id": tenant,
                            "device_id": rec.device_id,
                            "fingerprint": fp,
                            "subject": rec.extra.get("subject", ""),
                            "issuer": rec.extra.get("issuer", ""),
                            "problem": problem,
                        }
                    )
        return {"tenants": len(tenants), "checked": checked, "problems": problems}


def _issuer_problem(
    extra: dict[str, str], cas: set[str], ca_subjects: set[str], allow_self_signed: bool
) -> str | None:
    if extra.get("self_signed") == "1":
        if extra.get("proof") != "1":
            return "self_signed_without_proof"
        return None if allow_self_signed else "self_signed_not_allowed"
    anchors = [a for a in extra.get("anchors", "").split(",") if a]
    if "anchors" in extra:  # registered with tenant CAs: the CAs its path went through
        return None if any(a in cas for a in anchors) else "issuing_ca_removed"
    return None if extra.get("issuer", "") in ca_subjects else "issuer_not_a_tenant_ca"
