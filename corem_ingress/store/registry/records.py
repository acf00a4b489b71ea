"""What the registry writes and returns: credential records, issued secrets, and the
one ``CredentialWrite`` each credential kind builds for the Lua scripts. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass

from corem_ingress.core import certs
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind, Device

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    credential_id: str
    kind: CredentialKind
    tenant_id: str
    device_id: str
    status: str  # active | rotated (overlap window) | revoked
    lookup: str
    created_at: float
    revoked_at: float | None
    expires_at: float | None
    extra: dict[str, str]

    def effective_status(self, now: float) -> str:
        if self.status == "rotated" and self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return self.status

    def to_json(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {
            "credential_id": self.credential_id,
            "kind": self.kind.value,
            "device_id": self.device_id,
            "status": self.effective_status(now),
            "created_at": self.created_at,
        }
        if self.revoked_at is not None:
            out["revoked_at"] = self.revoked_at
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        if self.kind is CredentialKind.API_KEY:
            out["key_id"] = self.credential_id
        elif self.kind is CredentialKind.PSK:
            out["psk_identity"] = self.lookup
        else:
            out["fingerprint"] = self.credential_id
            for field in ("subject", "issuer", "serial", "key_type"):
                out[field] = self.extra.get(field, "")
            for field in ("not_before", "not_after"):
                out[field] = float(self.extra.get(field, "0"))
            out["self_signed"] = self.extra.get("self_signed") == "1"
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> CredentialRecord:
        """From the credential record hash (``{P}:cred:<id>``)."""
        extra = {k: v for k, v in data.items() if k not in _RECORD_FIELDS}
        return cls(
            credential_id=data["credential_id"],
            kind=CredentialKind(data["kind"]),
            tenant_id=data["tenant_id"],
            device_id=data["device_id"],
            status=data["status"],
            lookup=data["lookup"],
            created_at=float(data["created_at"]),
            revoked_at=float(data["revoked_at"]) if "revoked_at" in data else None,
            expires_at=float(data["expires_at"]) if "expires_at" in data else None,
            extra=extra,
        )


_RECORD_FIELDS = frozenset(
    {
        "credential_id",
        "kind",
        "tenant_id",
        "device_id",
        "status",
        "lookup",
        "created_at",
        "revoked_at",
        "expires_at",
    }
)


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    key_id: str
    api_key: str  # the raw key: returned to the caller once, never stored or logged
    device_id: str
    replaces: str | None = None
    old_key_expires_at: float | None = None

    def to_json(self) -> dict[str, object]:
        """What the caller gets back once (CLI and admin API alike)."""
        out: dict[str, object] = {
            "key_id": self.key_id,
            "api_key": self.api_key,
            "device_id": self.device_id,
        }
        if self.replaces:
            out["replaces"] = self.replaces
            out["old_key_expires_at"] = self.old_key_expires_at
        return out


@dataclass(frozen=True, slots=True)
class IssuedPsk:
    credential_id: str
    psk_identity: str
    psk: bytes  # returned to the caller once, stored only sealed
    device_id: str


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    device: Device
    created: bool
    api_key: IssuedApiKey | None = None
    psk: IssuedPsk | None = None
    cert: certs.CertInfo | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "device_id": self.device.device_id,
            "tenant_id": self.device.tenant_id,
            "hardware_id": self.device.hardware_id,
            "credential_kind": self.device.credential_kind.value,
            "created": self.created,
        }
        if self.api_key is not None:
            out["api_key"] = self.api_key.api_key
            out["key_id"] = self.api_key.key_id
        if self.psk is not None:
            out["psk_identity"] = self.psk.psk_identity
            out["psk"] = self.psk.psk.hex()
        if self.cert is not None:
            out["fingerprint"] = self.cert.fingerprint
        return out


@dataclass(frozen=True, slots=True)
class CredentialWrite:
    """One credential as the Lua scripts store it."""

    kind: CredentialKind
    #: The resolver's lookup handle: API-key hash, PSK identity or certificate fingerprint.
    lookup: str
    credential_id: str
    #: The compact JSON the resolver GETs (``{P}:auth:<kind>:<lookup>``).
    value: str
    #: The credential record hash (``{P}:cred:<id>``).
    record: dict[str, str]
    #: The record must not exist yet (a certificate: its fingerprint is its id).
    unique: bool = False

    def record_args(self) -> list[str]:
        return [item for pair in self.record.items() for item in pair]


def lookup_value(tenant_id: str, device_id: str, credential_id: str, **extra: object) -> str:
    value: dict[str, object] = {"t": tenant_id, "d": device_id, "c": credential_id}
    value.update(extra)
    return json.dumps(value, separators=(",", ":"))


def record_fields(
    kind: CredentialKind,
    tenant_id: str,
    device_id: str,
    credential_id: str,
    lookup: str,
    now: float,
    **extra: str,
) -> dict[str, str]:
    rec = {
        "credential_id": credential_id,
        "kind": kind.value,
        "tenant_id": tenant_id,
        "device_id": device_id,
        "status": "active",
        "lookup": lookup,
        "created_at": repr(now),
    }
    rec.update(extra)
    return rec


def kind_noun(kind: CredentialKind) -> str:
    return {"api_key": "API key", "psk": "PSK", "x509": "certificate"}[kind.value]


def page(limit: int, cursor: str | None) -> tuple[int, int]:
    """(start, limit) of a listing page; InvalidArgument for a bad limit or cursor."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is None or cursor == "":
        return 0, limit
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 12:
        raise InvalidArgument("cursor is not valid")
    return int(cursor), limit


@dataclass(frozen=True, slots=True)
class CaRecord:
    """One of a tenant's trust anchors (``{P}:tenant:<t>:ca:<fingerprint>``)."""

    info: certs.CaInfo
    pem: str
    added_at: float
    #: Device certificates chaining to this CA must come with proof of possession.
    require_device_proof: bool

    def to_record(self) -> dict[str, str]:
        i = self.info
        return {
            "fingerprint": i.fingerprint,
            "pem": self.pem,
            "subject": i.subject,
            "issuer": i.issuer,
            "serial": i.serial,
            "not_before": repr(i.not_before),
            "not_after": repr(i.not_after),
            "key_type": i.key_type,
            "path_length": "" if i.path_length is None else str(i.path_length),
            "self_signed": "1" if i.self_signed else "0",
            "require_device_proof": "1" if self.require_device_proof else "0",
            "added_at": repr(self.added_at),
        }

    @classmethod
    def from_record(cls, data: dict[str, str]) -> CaRecord:
        path_length = data.get("path_length", "")
        info = certs.CaInfo(
            fingerprint=data["fingerprint"],
            subject=data.get("subject", ""),
            issuer=data.get("issuer", ""),
            serial=data.get("serial", ""),
            not_before=float(data.get("not_before", "0")),
            not_after=float(data.get("not_after", "0")),
            key_type=data.get("key_type", ""),
            path_length=int(path_length) if path_length else None,
            self_signed=data.get("self_signed") == "1",
        )
        return cls(
            info,
            data.get("pem", ""),
            float(data.get("added_at", "0")),
            data.get("require_device_proof") == "1",
        )

    def to_json(self, now: float) -> dict[str, object]:
        out = self.info.to_json()
        out["require_device_proof"] = self.require_device_proof
        out["added_at"] = self.added_at
        out["expired"] = now >= self.info.not_after
        return out


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """A tenant's trust settings (``{P}:tenant:<t>:settings``); off unless set."""

    allow_self_signed: bool = False

    def to_json(self) -> dict[str, object]:
        return {"allow_self_signed": self.allow_self_signed}


@dataclass(frozen=True, slots=True)
class IssuedChallenge:
    """A proof-of-possession challenge: sign it (or put it in a CSR) with the key, once."""

    challenge: str
    expires_at: float

    def to_json(self) -> dict[str, object]:
        return {"challenge": self.challenge, "expires_at": self.expires_at}
