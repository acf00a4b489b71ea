"""Just-in-time provisioning with a tenant's CA (docs/provisioning.md).

A tenant marks one of its CAs ``auto_provision`` with a template (``core/jitp.py``): the
template goes on the CA record, and an issuer index (SHA-256 of the CA's subject name ->
tenant, CA) lets a handshake find the CA from an unregistered certificate's issuer name.
One CA subject auto-provisions for one tenant.

``jit_provision`` is what the resolver calls for an unknown certificate
(``Resolver.on_unknown_cert``): the certificate must verify against the tenant's CAs
(path validation, as at registration; the handshake proves possession of its key), its
hardware_id comes from the template, and the device is created with the certificate in
the provisioning Lua script (atomic on (tenant, hardware_id): two nodes racing on one
device make one device). A known hardware_id with another certificate is refused and
audited, unless the template allows rotation (the new certificate is registered, the
device's other certificates revoked). Rate-limited per tenant (``provisioning.
tenant_rate_per_minute``), every outcome audited (actor ``jitp:<CA fingerprint>``).
"""

from __future__ import annotations

import hashlib
import json

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress.core import certs, claims, jitp, trust
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    IngressError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from corem_ingress.core.identity import CredentialKind, check_tenant_id, new_device_id
from corem_ingress.store.registry.certs import AdmittedCert, cert_write
from corem_ingress.store.registry.claims import RATE_WINDOW_S, ClaimRegistry
from corem_ingress.store.registry.scripts import _Script

log = structlog.get_logger("corem.jitp")


def subject_hash(name: x509.Name) -> str:
    return hashlib.sha256(name.public_bytes()).hexdigest()


class JitpRegistry(ClaimRegistry):
    _jitp_scripts_: tuple[_Script, _Script] | None = None
    #: Provisioning requests per minute per tenant, JITP included (0: unlimited).
    jitp_rate_per_minute: int = 0

    @property
    def _jitp_scripts(self) -> tuple[_Script, _Script]:
        if self._jitp_scripts_ is None:
            self._jitp_scripts_ = (
                _Script(self._r, "jitp_enable"),
                _Script(self._r, "jitp_disable"),
            )
        return self._jitp_scripts_

    # -- operators ---------------------------------------------------------------------------
    async def set_auto_provision(
        self, tenant_id: str, ca_fingerprint: str, template: jitp.JitpTemplate | None, *, actor: str
    ) -> jitp.JitpTemplate | None:
        """Turn JITP on (with ``template``) or off (None) for one of the tenant's CAs."""
        check_tenant_id(tenant_id)

        async def op() -> jitp.JitpTemplate | None:
            ca = await self.get_ca(tenant_id, ca_fingerprint)
            cert = x509.load_pem_x509_certificate(ca.pem.encode())
            index = self.keys.jitp_issuer(subject_hash(cert.subject))
            mine = json.dumps({"t": tenant_id, "ca": ca_fingerprint}, separators=(",", ":"))
            record = self.keys.tenant_ca(tenant_id, ca_fingerprint)
            enable, disable = self._jitp_scripts
            if template is None:
                await disable([record, index], [mine])
                return None
            status = await enable(
                [record, index], [template.encode(), mine, await self._stale(index)]
            )
            if status == "not_found":
                raise NotFound("CA not found")
            if status == "conflict":
                raise AlreadyExists("a CA with this subject auto-provisions for another tenant")
            return template

        target = f"fingerprint={ca_fingerprint} auto_provision={'on' if template else 'off'}"
        return await self._audited(actor, tenant_id, "cas.auto_provision", target, op)

    async def auto_provision_template(
        self, tenant_id: str, ca_fingerprint: str
    ) -> jitp.JitpTemplate | None:
        await self.get_ca(tenant_id, ca_fingerprint)
        text = await self._wrap(
            self._r.hget(self.keys.tenant_ca(tenant_id, ca_fingerprint), "jitp")
        )
        return jitp.JitpTemplate.decode(text) if text else None

    async def _stale(self, index: str) -> str:
        """The index value if it names a CA that no longer exists (then it may be replaced)."""
        current = await self._r.get(index)
        if current is None:
            return ""
        try:
            doc = json.loads(current)
            exists = await self._r.hexists(self.keys.tenant_ca(doc["t"], doc["ca"]), "jitp")
        except (KeyError, TypeError, ValueError):
            return str(current)
        return "" if exists else str(current)

    # -- the handshake's hook ----------------------------------------------------------------
    async def jit_provision(self, der: bytes, proven: bool = True) -> bool:
        """Provision the device of an unregistered certificate if one of a tenant's
        auto-provisioning CAs issued it. True: the certificate is registered now (by this
        call or a concurrent one): resolve it again. False: not provisioned (refused and
        audited, or no auto-provisioning CA issued it). Raises ResourceExhausted (the
        tenant's provisioning rate) and Unavailable.

        ``proven``: the handshake already proved possession of the certificate's key (MQTT:
        TLS is complete). The DTLS handshake asks before the client's CertificateVerify, so
        there a certificate may create its device (the same outcome as when that device
        connects) but never rotates one: a replayed public certificate must not revoke a
        device's working one."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        raw = await self._wrap(self._r.get(self.keys.jitp_issuer(subject_hash(cert.issuer))))
        if raw is None:
            return False
        doc = json.loads(raw)
        tenant_id, ca_fp = str(doc["t"]), str(doc["ca"])
        text = await self._wrap(self._r.hget(self.keys.tenant_ca(tenant_id, ca_fp), "jitp"))
        if not text:
            return False  # turned off, or the CA was removed
        await self._jitp_rate(tenant_id, ca_fp)
        actor = f"jitp:{ca_fp[:16]}"
        fp = certs.fingerprint_der(der)
        try:
            template = jitp.JitpTemplate.decode(text)
            hardware_id = jitp.hardware_id_of(cert, template)
        except InvalidArgument as exc:
            await self._audit(actor, tenant_id, "jitp.provision", f"fingerprint={fp}", exc.code)
            log.info("jitp.refused", tenant=tenant_id, reason=exc.message)
            return False
        target = f"hardware_id={hardware_id} fingerprint={fp}"
        try:
            return await self._audited(
                actor,
                tenant_id,
                "jitp.provision",
                target,
                lambda: self._jit(tenant_id, hardware_id, cert, template, proven),
            )
        except (FailedPrecondition, AlreadyExists, InvalidArgument) as exc:
            log.info("jitp.refused", tenant=tenant_id, hardware_id=hardware_id, reason=exc.message)
            return False

    # -- LwM2M bootstrap by the tenant CA -----------------------------------------------------
    async def bootstrap_by_certificate(
        self, tenant_id: str, device_id: str, der: bytes, endpoint: str
    ) -> None:
        """May the device of this certificate session bootstrap as ``endpoint``? Its
        certificate's CA must auto-provision for the session's tenant (the mark JITP uses:
        the same trust decision, and the handshake's JITP is what found or created the
        device), and ``endpoint`` must be both the hardware_id the CA's template derives from
        the certificate and the device's own. PermissionDenied (4.03) otherwise,
        ResourceExhausted (4.29) beyond the tenant's provisioning rate; audited (action
        ``lwm2m.bootstrap``, actor ``jitp:<CA fingerprint>``) whatever the outcome."""
        fp = certs.fingerprint_der(der)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise PermissionDenied("unreadable peer certificate") from None
        raw = await self._wrap(self._r.get(self.keys.jitp_issuer(subject_hash(cert.issuer))))
        doc = json.loads(raw) if raw is not None else {}
        ca_fp = str(doc.get("ca", ""))
        text = None
        if doc.get("t") == tenant_id:
            text = await self._wrap(self._r.hget(self.keys.tenant_ca(tenant_id, ca_fp), "jitp"))
        actor = f"jitp:{ca_fp[:16]}" if text else f"cert:{fp[:16]}"
        target = f"endpoint={endpoint} fingerprint={fp}"

        async def check() -> None:
            if not text:
                raise PermissionDenied(
                    "the certificate's CA does not auto-provision (bootstrap) for this tenant"
                )
            derived = jitp.hardware_id_of(cert, jitp.JitpTemplate.decode(text))
            device = await self._device(device_id)
            if not (endpoint == derived == device.hardware_id):
                raise PermissionDenied(
                    "the endpoint is not the hardware_id of the certificate's device"
                )

        if text:  # counted with JITP and claims (a refusal is audited as rate=tenant)
            await self._jitp_rate(tenant_id, ca_fp)
        await self._audited(actor, tenant_id, "lwm2m.bootstrap", target, check)

    async def _jitp_rate(self, tenant_id: str, ca_fp: str) -> None:
        limit = self.jitp_rate_per_minute
        if limit <= 0:
            return
        window, ttl = claims.rate_window(self._clock(), RATE_WINDOW_S)
        key = self.keys.provisioning_rate(f"tenant:{tenant_id}", window)
        count = int(await self._wrap(self._r.incr(key)))
        if count == 1:
            await self._wrap(self._r.expire(key, ttl))
        if claims.over_rate(count, limit):
            await self._audit(
                f"jitp:{ca_fp[:16]}",
                tenant_id,
                "jitp.provision",
                "rate=tenant",
                ResourceExhausted.code,
            )
            raise ResourceExhausted(
                "too many provisioning requests for this tenant: retry later",
                retry_after_s=ttl,
                reason="provisioning rate (tenant)",
                cause=Cause.PROVISIONING_RATE,
            )

    async def _jit(
        self,
        tenant_id: str,
        hardware_id: str,
        cert: x509.Certificate,
        template: jitp.JitpTemplate,
        proven: bool,
    ) -> bool:
        now = self._clock()
        pem = cert.public_bytes(Encoding.PEM)
        info, _ = certs.load_device_cert(pem, now=now)
        cas = await self.tenant_ca_certs(tenant_id)
        anchors = trust.verify_registration_chain(
            cert, {fp: ca for fp, (ca, _) in cas.items()}, now=now
        )
        # The handshake proved possession of the key: registered as proven.
        admitted = AdmittedCert(info, anchors, True)
        device_id = new_device_id()
        write = cert_write(tenant_id, device_id, admitted, now)
        status, winner = await self._scripts.provision(
            device_id=device_id,
            tenant_id=tenant_id,
            hardware_id=hardware_id,
            kind=CredentialKind.X509,
            now=now,
            credential=write,
            created_event=self._created_event(tenant_id, device_id, write, now),
        )
        if status == "created":
            if template.metadata:
                await self._r.hset(
                    self.keys.device(device_id), "metadata", json.dumps(template.metadata)
                )
            log.info("jitp.provisioned", tenant=tenant_id, device=device_id)
            return True
        if await self._r.exists(self.keys.lookup(CredentialKind.X509, info.fingerprint)):
            return True  # a concurrent handshake of the same certificate won the race
        if status == "conflict":
            raise AlreadyExists("certificate fingerprint is already registered (or revoked)")
        existing = await self._device(winner)
        action = jitp.decide(existing.credential_kind, template, possession_proven=proven)
        if action is jitp.JitpAction.REFUSE:
            raise AlreadyExists(
                "a device with this hardware_id exists with another certificate "
                "(rotation is not allowed by the CA's template)"
            )
        # Rotation: the new certificate first, then the device's other ones go.
        old = [
            c
            for c in await self.credentials(tenant_id, winner)
            if c.kind is CredentialKind.X509 and c.status == "active"
        ]
        write = cert_write(tenant_id, winner, admitted, now)
        await self._add_credential(tenant_id, winner, write, now)
        for rec in old:
            try:
                await self._revoke_credential(rec)
            except IngressError:
                continue
        log.info("jitp.rotated", tenant=tenant_id, device=winner, revoked=len(old))
        return True
