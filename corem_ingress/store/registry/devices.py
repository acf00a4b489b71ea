"""Devices: provisioning, idempotent on (tenant, hardware_id) inside one Lua script, with
the device's first credential of any kind; lookups by hardware id."""

from __future__ import annotations

from corem_ingress.core import certs, proof
from corem_ingress.core.errors import AlreadyExists, InvalidArgument, NotFound
from corem_ingress.core.identity import (
    CredentialKind,
    Device,
    check_hardware_id,
    check_tenant_id,
    new_device_id,
)
from corem_ingress.store.registry.api_keys import ApiKeyRegistry, api_key_write
from corem_ingress.store.registry.certs import CertRegistry, cert_write
from corem_ingress.store.registry.psks import PskRegistry
from corem_ingress.store.registry.records import (
    CredentialWrite,
    IssuedApiKey,
    IssuedPsk,
    ProvisionResult,
)


class DeviceRegistry(ApiKeyRegistry, PskRegistry, CertRegistry):
    async def provision(
        self,
        tenant_id: str,
        hardware_id: str,
        kind: CredentialKind,
        *,
        actor: str,
        cert_pem: str | bytes | None = None,
        psk_identity: str | None = None,
        psk_bytes: bytes | None = None,
        proof_of_possession: proof.Proof | None = None,
    ) -> ProvisionResult:
        check_tenant_id(tenant_id)
        check_hardware_id(hardware_id)
        if kind is not CredentialKind.X509 and (
            cert_pem is not None or proof_of_possession is not None
        ):
            raise InvalidArgument(
                "a certificate or a proof can only be given for credential kind x509"
            )
        if kind is not CredentialKind.PSK and (psk_identity is not None or psk_bytes is not None):
            raise InvalidArgument("a PSK identity or key can only be given for credential kind psk")
        return await self._audited(
            actor,
            tenant_id,
            "devices.provision",
            f"hardware_id={hardware_id}",
            lambda: self._do_provision(
                tenant_id, hardware_id, kind, cert_pem, psk_identity, psk_bytes, proof_of_possession
            ),
        )

    async def _do_provision(
        self,
        tenant_id: str,
        hardware_id: str,
        kind: CredentialKind,
        cert_pem: str | bytes | None,
        psk_identity: str | None,
        psk_bytes: bytes | None,
        given_proof: proof.Proof | None,
    ) -> ProvisionResult:
        now = self._clock()
        # Fast path: an existing device never gets a second secret, whatever was asked.
        existing = await self._r.get(self.keys.hardware(tenant_id, hardware_id))
        if existing is not None:
            return ProvisionResult(await self._device(existing), created=False)

        device_id = new_device_id()
        issued_key: IssuedApiKey | None = None
        issued_psk: IssuedPsk | None = None
        cert_info: certs.CertInfo | None = None
        write: CredentialWrite | None = None
        if kind is CredentialKind.API_KEY:
            issued_key, write = api_key_write(tenant_id, device_id, now)
        elif kind is CredentialKind.PSK:
            issued_psk = self._new_psk(tenant_id, hardware_id, device_id, psk_identity, psk_bytes)
            write = self._psk_write(tenant_id, device_id, issued_psk, now)
        elif cert_pem is not None:
            # The tenant's trust decides before the script can say "already registered".
            admitted = await self._admit_cert(tenant_id, cert_pem, given_proof, now)
            cert_info = admitted.info
            write = cert_write(tenant_id, device_id, admitted, now)

        status, winner = await self._scripts.provision(
            device_id=device_id,
            tenant_id=tenant_id,
            hardware_id=hardware_id,
            kind=kind,
            now=now,
            credential=write,
            created_event=self._created_event(tenant_id, device_id, write, now) if write else "",
        )
        if status == "existing":  # lost a race with a concurrent call: same answer as above
            return ProvisionResult(await self._device(winner), created=False)
        if status == "conflict":
            if kind is CredentialKind.PSK:
                raise AlreadyExists("PSK identity is already in use")
            raise AlreadyExists("certificate fingerprint is already registered")
        device = await self._device(device_id)
        return ProvisionResult(device, True, issued_key, issued_psk, cert_info)

    async def find_device(self, tenant_id: str, hardware_id: str) -> Device:
        check_tenant_id(tenant_id)
        check_hardware_id(hardware_id)
        device_id = await self._wrap(self._r.get(self.keys.hardware(tenant_id, hardware_id)))
        if device_id is None:
            raise NotFound("device not found")
        return await self.get_device(tenant_id, device_id)
