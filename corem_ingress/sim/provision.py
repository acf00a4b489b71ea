"""Simulated devices' credentials: created through the registry, kept device-side in a state file.

Idempotent: a re-run reuses the devices (same hardware ids) and the secrets saved
on the first run; a device whose saved credential is gone (revoked, rotated, Redis
reset) gets a fresh one. The state file is the devices' own secret storage: mode 0600.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from corem_ingress import devcerts
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry

ACTOR = "sim:provision"


@dataclass
class SimCredential:
    index: int
    hardware_id: str
    device_id: str
    kind: str
    credential_id: str
    api_key: str | None = None
    psk_identity: str | None = None
    psk_hex: str | None = None
    cert_path: str | None = None
    key_path: str | None = None


def load_ca(cert_path: str | Path, key_path: str | Path) -> devcerts.Issued:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    return devcerts.Issued(cert, key)  # type: ignore[arg-type]


class SimProvisioner:
    def __init__(
        self,
        registry: Registry,
        tenant: str,
        kind: CredentialKind,
        state_dir: str | Path,
        *,
        ca: devcerts.Issued | None = None,
        prefix: str = "sim",
    ) -> None:
        self.registry = registry
        self.tenant = tenant
        self.kind = kind
        self.dir = Path(state_dir)
        self.ca = ca
        self.prefix = prefix
        self.state_file = self.dir / f"{prefix}-{tenant}-{kind.value}.json"

    def _load(self) -> dict[str, SimCredential]:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return {c["hardware_id"]: SimCredential(**c) for c in raw.get("devices", [])}

    def _save(self, creds: dict[str, SimCredential]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"devices": [asdict(c) for c in creds.values()]}, f)
        tmp.replace(self.state_file)

    async def ensure(self, count: int) -> list[SimCredential]:
        saved = self._load()
        out: list[SimCredential] = []
        if self.kind is CredentialKind.X509 and self.ca is not None:
            # The simulator's CA issues its devices: it is the tenant's trust anchor.
            await self.registry.add_ca(self.tenant, self.ca.cert_pem, actor=ACTOR)
        for i in range(count):
            hw = f"{self.prefix}-{self.kind.value}-{i:06d}"
            cred = saved.get(hw)
            if cred is not None and await self._still_valid(cred):
                out.append(cred)
                continue
            cred = await self._issue(i, hw)
            saved[hw] = cred
            out.append(cred)
            if i % 200 == 199:
                self._save(saved)
        self._save(saved)
        return out

    async def _still_valid(self, cred: SimCredential) -> bool:
        try:
            records = await self.registry.credentials(self.tenant, cred.device_id)
        except Exception:
            return False
        return any(r.credential_id == cred.credential_id and r.status == "active" for r in records)

    async def _issue(self, index: int, hw: str) -> SimCredential:
        kind = self.kind
        if kind is CredentialKind.X509:
            leaf = self._new_cert(hw)
            res = await self.registry.provision(
                self.tenant, hw, kind, actor=ACTOR, cert_pem=leaf.cert_pem
            )
            if not res.created:
                await self.registry.register_cert(
                    self.tenant, res.device.device_id, leaf.cert_pem, actor=ACTOR
                )
            return self._cert_cred(index, hw, res.device.device_id, leaf)
        res = await self.registry.provision(self.tenant, hw, kind, actor=ACTOR)
        device_id = res.device.device_id
        if kind is CredentialKind.API_KEY:
            issued = res.api_key or await self.registry.create_api_key(
                self.tenant, device_id, actor=ACTOR
            )
            return SimCredential(
                index, hw, device_id, kind.value, issued.key_id, api_key=issued.api_key
            )
        psk = res.psk or await self.registry.rotate_psk(self.tenant, device_id, actor=ACTOR)
        return SimCredential(
            index,
            hw,
            device_id,
            kind.value,
            psk.credential_id,
            psk_identity=psk.psk_identity,
            psk_hex=psk.psk.hex(),
        )

    def _new_cert(self, hw: str) -> devcerts.Issued:
        if self.ca is None:
            raise ValueError("x509 devices need a CA (--ca-cert/--ca-key)")
        return devcerts.issue(self.ca, hw)

    def _cert_cred(
        self, index: int, hw: str, device_id: str, leaf: devcerts.Issued
    ) -> SimCredential:
        certs_dir = self.dir / f"{self.prefix}-certs"
        certs_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = certs_dir / f"{hw}.pem", certs_dir / f"{hw}.key"
        leaf.write(cert_path, key_path)
        return SimCredential(
            index,
            hw,
            device_id,
            CredentialKind.X509.value,
            leaf.fingerprint,
            cert_path=str(cert_path),
            key_path=str(key_path),
        )

    async def revoke(self, cred: SimCredential) -> float:
        """Revoke through the registry; returns the wall time the call returned."""
        if self.kind is CredentialKind.API_KEY:
            await self.registry.revoke_api_key(self.tenant, cred.credential_id, actor=ACTOR)
        elif self.kind is CredentialKind.PSK:
            await self.registry.revoke_psk(self.tenant, cred.device_id, actor=ACTOR)
        else:
            await self.registry.revoke_cert(self.tenant, cred.credential_id, actor=ACTOR)
        return time.time()
