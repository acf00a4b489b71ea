"""Tenant trust anchors: the CA certificates (roots or intermediates) that issue a tenant's
device certificates, and the tenant's self-signed setting.

Stored per tenant (``{P}:tenant:<t>:ca:<fingerprint>``), so another tenant's CA is not
found, exactly like one that does not exist. Every change publishes a ``trust`` event on
the bus in the same Lua step: each node drops the tenant's trust from its resolver cache
and re-checks the tenant's live certificate sessions.
"""

from __future__ import annotations

from cryptography import x509

from corem_ingress.core import certs, proof
from corem_ingress.core.errors import FailedPrecondition, InvalidArgument, NotFound
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.identity import CredentialKind, check_tenant_id
from corem_ingress.store.registry.proofs import ProofRegistry
from corem_ingress.store.registry.records import CaRecord, TenantSettings, page

#: Most CAs one tenant may register (each is checked at every certificate registration).
MAX_TENANT_CAS = 64


class CaRegistry(ProofRegistry):
    def _trust_event(self, tenant_id: str, what: str) -> str:
        return (
            CredentialEvent(
                EventType.TRUST, CredentialKind.X509, what, "", tenant_id, "", self._clock()
            )
            .encode()
            .decode()
        )

    async def add_ca(
        self,
        tenant_id: str,
        pem: str | bytes,
        *,
        actor: str,
        proof_of_possession: proof.Proof | None = None,
        require_proof: bool = False,
        require_device_proof: bool = False,
    ) -> tuple[CaRecord, bool]:
        """(the CA, True if added now). Idempotent: an existing CA is returned unchanged.

        ``require_proof``: the caller must prove possession of the CA's key (the admin API
        asks for it: a CA certificate is public, and without the proof any tenant could
        claim another's CA and with it that CA's devices).
        """
        check_tenant_id(tenant_id)
        now = self._clock()
        # Parsed first so that the audit record names the CA; a bad PEM is audited too.
        parsed: tuple[certs.CaInfo, x509.Certificate] | InvalidArgument
        try:
            parsed = certs.load_ca_cert(pem, now=now)
        except InvalidArgument as exc:
            parsed = exc
        target = (
            "" if isinstance(parsed, InvalidArgument) else f"fingerprint={parsed[0].fingerprint}"
        )

        async def op() -> tuple[CaRecord, bool]:
            if isinstance(parsed, InvalidArgument):
                raise parsed
            info, cert = parsed
            if require_proof:
                if proof_of_possession is None:
                    raise InvalidArgument(
                        "adding a CA needs proof of possession of its key (field 'proof')"
                    )
                await self._check_proof(tenant_id, proof_of_possession, cert.public_key())
            text = pem.decode() if isinstance(pem, bytes) else pem
            record = CaRecord(info, text.strip() + "\n", now, require_device_proof)
            status = await self._scripts.ca_add(
                tenant_id=tenant_id,
                fingerprint=info.fingerprint,
                now=now,
                max_cas=MAX_TENANT_CAS,
                record=record.to_record(),
                trust_event=self._trust_event(tenant_id, info.fingerprint),
            )
            if status == "full":
                raise FailedPrecondition(f"a tenant may hold at most {MAX_TENANT_CAS} CAs")
            if status == "existing":
                return await self.get_ca(tenant_id, info.fingerprint), False
            return record, True

        return await self._audited(actor, tenant_id, "cas.add", target, op)

    async def get_ca(self, tenant_id: str, fingerprint: str) -> CaRecord:
        check_tenant_id(tenant_id)
        try:
            certs.check_fingerprint(fingerprint)
        except InvalidArgument:
            raise NotFound("CA not found") from None
        data = await self._wrap(self._r.hgetall(self.keys.tenant_ca(tenant_id, fingerprint)))
        if not data:
            raise NotFound("CA not found")
        return CaRecord.from_record(data)

    async def list_cas(
        self, tenant_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[CaRecord], str | None]:
        check_tenant_id(tenant_id)
        start, limit = page(limit, cursor)
        fps = await self._wrap(
            self._r.zrange(self.keys.tenant_cas(tenant_id), start, start + limit)
        )
        found = []
        for fp in fps[:limit]:
            data = await self._wrap(self._r.hgetall(self.keys.tenant_ca(tenant_id, fp)))
            if data:
                found.append(CaRecord.from_record(data))
        return found, (str(start + limit) if len(fps) > limit else None)

    async def remove_ca(self, tenant_id: str, fingerprint: str, *, actor: str) -> CaRecord:
        """Remove now: certificates chaining only to it stop authenticating on every node."""
        check_tenant_id(tenant_id)

        async def op() -> CaRecord:
            try:
                certs.check_fingerprint(fingerprint)
            except InvalidArgument:
                raise NotFound("CA not found") from None
            data = await self._scripts.ca_remove(
                tenant_id=tenant_id,
                fingerprint=fingerprint,
                trust_event=self._trust_event(tenant_id, fingerprint),
            )
            if not data:
                raise NotFound("CA not found")
            return CaRecord.from_record(data)

        return await self._audited(actor, tenant_id, "cas.remove", f"fingerprint={fingerprint}", op)

    async def tenant_ca_certs(self, tenant_id: str) -> dict[str, tuple[x509.Certificate, bool]]:
        """fingerprint -> (CA certificate, require_device_proof), for chain verification."""
        fps = await self._wrap(self._r.zrange(self.keys.tenant_cas(tenant_id), 0, -1))
        out: dict[str, tuple[x509.Certificate, bool]] = {}
        for fp in fps:
            data = await self._wrap(self._r.hgetall(self.keys.tenant_ca(tenant_id, fp)))
            if not data:
                continue  # removed meanwhile
            try:
                cert = x509.load_pem_x509_certificate(data["pem"].encode())
            except (KeyError, ValueError):
                continue  # a corrupt record anchors nothing
            out[fp] = (cert, data.get("require_device_proof") == "1")
        return out

    # -- settings ------------------------------------------------------------------------------
    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        check_tenant_id(tenant_id)
        value = await self._wrap(
            self._r.hget(self.keys.tenant_settings(tenant_id), "allow_self_signed")
        )
        return TenantSettings(allow_self_signed=value == "1")

    async def set_allow_self_signed(
        self, tenant_id: str, allowed: bool, *, actor: str
    ) -> TenantSettings:
        """Turning it off stops the tenant's self-signed devices on every node."""
        check_tenant_id(tenant_id)

        async def op() -> TenantSettings:
            await self._scripts.tenant_setting(
                tenant_id=tenant_id,
                field="allow_self_signed",
                value="1" if allowed else "0",
                trust_event=self._trust_event(tenant_id, "settings"),
            )
            return TenantSettings(allow_self_signed=allowed)

        target = f"allow_self_signed={'on' if allowed else 'off'}"
        return await self._audited(actor, tenant_id, "tenants.settings", target, op)
