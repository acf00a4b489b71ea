"""The credential registry: provisioning and every credential change, atomic in Redis.

Each change runs as one Lua script that writes the records and publishes the
credential event on the revocation bus in the same step. Every operation is
audited (who, tenant, what, outcome; never a secret) to the audit stream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress import metrics
from corem_ingress.core import api_keys, certs, psk
from corem_ingress.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    IngressError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.identity import (
    CredentialKind,
    Device,
    DeviceStatus,
    check_device_id,
    check_hardware_id,
    check_tenant_id,
    new_device_id,
)
from corem_ingress.store.connection import UNAVAILABLE_ERRORS
from corem_ingress.store.keys import KeySchema

T = TypeVar("T")
Clock = Callable[[], float]

AUDIT_MAXLEN = 1_000_000
MAX_PAGE = 500


def _script(name: str) -> str:
    return resources.files("corem_ingress.store").joinpath(f"lua/{name}.lua").read_text()


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


def _lookup_value(tenant_id: str, device_id: str, credential_id: str, **extra: object) -> str:
    value: dict[str, object] = {"t": tenant_id, "d": device_id, "c": credential_id}
    value.update(extra)
    return json.dumps(value, separators=(",", ":"))


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class Registry:
    """Writes (and operator reads) of devices and credentials."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        keyring: psk.KeyRing | None,
        api_key_overlap: float,
        api_key_overlap_max: float,
        psk_min_bytes: int = psk.MIN_PSK_BYTES,
        clock: Clock = time.time,
    ) -> None:
        if not psk.LOWEST_MIN_PSK_BYTES <= psk_min_bytes <= psk.MAX_PSK_BYTES:
            raise ValueError("psk_min_bytes out of range")
        self.psk_min_bytes = psk_min_bytes
        # decode_responses=True: every reply is str; redis-py types them as bytes | str.
        self._r: Any = redis
        self.keys = keys
        self._keyring = keyring
        self.api_key_overlap = api_key_overlap
        self.api_key_overlap_max = api_key_overlap_max
        self._clock = clock
        self._provision = redis.register_script(_script("provision"))
        self._add = redis.register_script(_script("add_credential"))
        self._rotate = redis.register_script(_script("rotate"))
        self._revoke = redis.register_script(_script("revoke"))

    @property
    def redis(self) -> aioredis.Redis:
        """The client the registry writes with (for companions: downlinks, LwM2M store)."""
        return self._r  # type: ignore[no-any-return]

    # -- plumbing ------------------------------------------------------------------------
    async def _audited(
        self,
        actor: str,
        tenant_id: str,
        action: str,
        target: str,
        op: Callable[[], Awaitable[T]],
    ) -> T:
        try:
            result = await op()
        except IngressError as exc:
            metrics.credential_operation(action, exc.code)
            await self._audit(actor, tenant_id, action, target, exc.code)
            raise
        except UNAVAILABLE_ERRORS as exc:
            metrics.credential_operation(action, Unavailable.code)
            metrics.redis_error("registry")
            raise Unavailable("registry storage is unreachable", reason=str(exc)) from None
        metrics.credential_operation(action, "OK")
        await self._audit(actor, tenant_id, action, target, "OK")
        return result

    async def _eval(self, script: Any, *, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL when the server lacks the script.

        Both are routed by the keys, so on a cluster only the node serving the slot is asked;
        redis-py's own fallback would SCRIPT LOAD on every master, which fails while one of
        them is down (docs/reliability.md).
        """
        try:
            return await self._r.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self._r.eval(script.script, len(keys), *keys, *args)

    async def audit(self, actor: str, tenant_id: str, action: str, target: str) -> None:
        """Record an operation done outside the registry's own methods (reads, downlinks)."""
        await self._audit(actor, tenant_id, action, target, "OK")

    async def _audit(
        self, actor: str, tenant_id: str, action: str, target: str, outcome: str
    ) -> None:
        try:
            await self._r.xadd(
                self.keys.audit_stream,
                {
                    "at": repr(self._clock()),
                    "actor": actor,
                    "tenant_id": tenant_id,
                    "action": action,
                    "target": target,
                    "outcome": outcome,
                },
                maxlen=AUDIT_MAXLEN,
                approximate=True,
            )
        except redis.exceptions.RedisError as exc:
            if outcome == "OK":
                # The change is made but could not be audited: tell the caller, do not hide it.
                raise Unavailable(
                    "change applied but the audit record failed", reason=str(exc)
                ) from None

    def _event(
        self,
        type_: EventType,
        kind: CredentialKind,
        lookup: str,
        credential_id: str,
        tenant_id: str,
        device_id: str,
        now: float,
        expires_at: float | None = None,
    ) -> str:
        return (
            CredentialEvent(
                type_, kind, lookup, credential_id, tenant_id, device_id, now, expires_at
            )
            .encode()
            .decode()
        )

    def _require_keyring(self) -> psk.KeyRing:
        if self._keyring is None:
            raise FailedPrecondition(
                "PSK credentials need a key-encryption key: set COREM_PSK_KEK or COREM_PSK_KEK_FILE"
            )
        return self._keyring

    # -- devices -------------------------------------------------------------------------
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
    ) -> ProvisionResult:
        check_tenant_id(tenant_id)
        check_hardware_id(hardware_id)
        if kind is not CredentialKind.X509 and cert_pem is not None:
            raise InvalidArgument("a certificate can only be given for credential kind x509")
        if kind is not CredentialKind.PSK and (psk_identity is not None or psk_bytes is not None):
            raise InvalidArgument("a PSK identity or key can only be given for credential kind psk")
        return await self._audited(
            actor,
            tenant_id,
            "devices.provision",
            f"hardware_id={hardware_id}",
            lambda: self._do_provision(
                tenant_id, hardware_id, kind, cert_pem, psk_identity, psk_bytes
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
    ) -> ProvisionResult:
        now = self._clock()
        k = self.keys
        # Fast path: an existing device never gets a second secret, whatever was asked.
        existing = await self._r.get(k.hardware(tenant_id, hardware_id))
        if existing is not None:
            return ProvisionResult(await self._device(existing), created=False)

        device_id = new_device_id()
        issued_key: IssuedApiKey | None = None
        issued_psk: IssuedPsk | None = None
        cert_info: certs.CertInfo | None = None
        cred: tuple[str, str, str, dict[str, str], bool] | None = (
            None  # lookup, id, value, record, unique
        )
        if kind is CredentialKind.API_KEY:
            raw = api_keys.generate()
            key_id = api_keys.new_key_id()
            issued_key = IssuedApiKey(key_id, raw, device_id)
            lookup = api_keys.hash_key(raw)
            cred = (
                lookup,
                key_id,
                _lookup_value(tenant_id, device_id, key_id),
                self._record(kind, tenant_id, device_id, key_id, lookup, now),
                False,
            )
        elif kind is CredentialKind.PSK:
            issued_psk = self._new_psk(tenant_id, hardware_id, device_id, psk_identity, psk_bytes)
            cred = self._psk_cred(tenant_id, device_id, issued_psk, now)
        elif cert_pem is not None:
            cert_info = certs.parse_device_cert(cert_pem, now=now)
            cred = self._cert_cred(tenant_id, device_id, cert_info, now)

        lookup_key = k.lookup(kind, cred[0]) if cred else k.hardware(tenant_id, hardware_id)
        cred_key = k.credential(cred[1]) if cred else k.hardware(tenant_id, hardware_id)
        event = (
            self._event(EventType.CREATED, kind, cred[0], cred[1], tenant_id, device_id, now)
            if cred
            else ""
        )
        status, value = await self._eval(
            self._provision,
            keys=[
                k.hardware(tenant_id, hardware_id),
                k.device(device_id),
                k.tenant_devices(tenant_id),
                lookup_key,
                cred_key,
                k.device_credentials(device_id),
                k.tenant_certs(tenant_id),
            ],
            args=[
                device_id,
                tenant_id,
                hardware_id,
                kind.value,
                repr(now),
                "1" if cred else "0",
                cred[2] if cred else "",
                cred[1] if cred else "",
                k.bus_channel,
                event,
                "1" if cred and cred[4] else "0",
                *(_flatten(cred[3]) if cred else []),
            ],
        )
        if status == "existing":  # lost a race with a concurrent call: same answer as above
            return ProvisionResult(await self._device(value), created=False)
        if status == "conflict":
            if kind is CredentialKind.PSK:
                raise AlreadyExists("PSK identity is already in use")
            raise AlreadyExists("certificate fingerprint is already registered")
        device = await self._device(device_id)
        return ProvisionResult(device, True, issued_key, issued_psk, cert_info)

    async def _device(self, device_id: str) -> Device:
        data = await self._r.hgetall(self.keys.device(device_id))
        if not data:
            raise NotFound("device not found")
        return Device(
            device_id=data["device_id"],
            tenant_id=data["tenant_id"],
            hardware_id=data["hardware_id"],
            credential_kind=CredentialKind(data["credential_kind"]),
            status=DeviceStatus(data["status"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
        )

    async def get_device(self, tenant_id: str, device_id: str) -> Device:
        check_tenant_id(tenant_id)
        try:
            check_device_id(device_id)
        except InvalidArgument:
            raise NotFound("device not found") from None
        device = await self._wrap(self._device(device_id))
        if device.tenant_id != tenant_id:  # another tenant's device does not exist for you
            raise NotFound("device not found")
        return device

    async def find_device(self, tenant_id: str, hardware_id: str) -> Device:
        check_tenant_id(tenant_id)
        check_hardware_id(hardware_id)
        device_id = await self._wrap(self._r.get(self.keys.hardware(tenant_id, hardware_id)))
        if device_id is None:
            raise NotFound("device not found")
        return await self.get_device(tenant_id, device_id)

    async def list_devices(
        self, tenant_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Device], str | None]:
        check_tenant_id(tenant_id)
        start, limit = _page(limit, cursor)
        ids = await self._wrap(
            self._r.zrange(self.keys.tenant_devices(tenant_id), start, start + limit)
        )
        more = len(ids) > limit
        devices = [await self._wrap(self._device(i)) for i in ids[:limit]]
        return devices, (str(start + limit) if more else None)

    async def credentials(self, tenant_id: str, device_id: str) -> list[CredentialRecord]:
        await self.get_device(tenant_id, device_id)
        ids = await self._wrap(self._r.smembers(self.keys.device_credentials(device_id)))
        records = [await self._credential(i) for i in sorted(ids)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    async def _credential(self, credential_id: str) -> CredentialRecord | None:
        data = await self._wrap(self._r.hgetall(self.keys.credential(credential_id)))
        if not data:
            return None
        extra = {
            k: v
            for k, v in data.items()
            if k
            not in {
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
        }
        return CredentialRecord(
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

    async def _wrap(self, aw: Awaitable[T]) -> T:
        try:
            return await aw
        except UNAVAILABLE_ERRORS as exc:
            metrics.redis_error("registry")
            raise Unavailable("registry storage is unreachable", reason=str(exc)) from None

    @staticmethod
    def _record(
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

    # -- API keys ------------------------------------------------------------------------
    async def create_api_key(self, tenant_id: str, device_id: str, *, actor: str) -> IssuedApiKey:
        check_tenant_id(tenant_id)

        async def op() -> IssuedApiKey:
            await self.get_device(tenant_id, device_id)
            now = self._clock()
            raw = api_keys.generate()
            key_id = api_keys.new_key_id()
            lookup = api_keys.hash_key(raw)
            await self._add_credential(
                CredentialKind.API_KEY,
                tenant_id,
                device_id,
                key_id,
                lookup,
                _lookup_value(tenant_id, device_id, key_id),
                self._record(CredentialKind.API_KEY, tenant_id, device_id, key_id, lookup, now),
                now,
                unique_record=False,
            )
            return IssuedApiKey(key_id, raw, device_id)

        return await self._audited(actor, tenant_id, "keys.create", f"device={device_id}", op)

    async def _active_credential(
        self, tenant_id: str, credential_id: str, kind: CredentialKind, device_id: str | None
    ) -> CredentialRecord:
        rec = await self._credential(credential_id)
        if (
            rec is None
            or rec.tenant_id != tenant_id
            or rec.kind is not kind
            or (device_id is not None and rec.device_id != device_id)
        ):
            raise NotFound(f"{_kind_noun(kind)} not found")
        return rec

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
            raw = api_keys.generate()
            new_id = api_keys.new_key_id()
            lookup = api_keys.hash_key(raw)
            expires_at = now + overlap if overlap > 0 else None
            await self._rotate_credential(
                CredentialKind.API_KEY,
                tenant_id,
                old,
                new_id,
                lookup,
                _lookup_value(tenant_id, old.device_id, new_id),
                self._record(CredentialKind.API_KEY, tenant_id, old.device_id, new_id, lookup, now),
                now,
                expires_at,
            )
            return IssuedApiKey(new_id, raw, old.device_id, key_id, expires_at)

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

    # -- PSKs ----------------------------------------------------------------------------
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
            psk.check_identity(identity)
            if identity is not None
            else psk.generate_identity(tenant_id, hardware_id)
        )
        key = (
            psk.check_psk(key, min_bytes=self.psk_min_bytes)
            if key is not None
            else psk.generate_psk(self.psk_min_bytes)
        )
        return IssuedPsk(psk.new_psk_credential_id(), identity, key, device_id)

    def _psk_cred(
        self, tenant_id: str, device_id: str, issued: IssuedPsk, now: float
    ) -> tuple[str, str, str, dict[str, str], bool]:
        sealed = self._require_keyring().seal(tenant_id, issued.psk_identity, issued.psk)
        value = _lookup_value(tenant_id, device_id, issued.credential_id, **sealed.to_json())
        record = self._record(
            CredentialKind.PSK, tenant_id, device_id, issued.credential_id, issued.psk_identity, now
        )
        return issued.psk_identity, issued.credential_id, value, record, False

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
            lookup, cred_id, value, record, _ = self._psk_cred(tenant_id, device_id, issued, now)
            try:
                old = await self._active_psk(tenant_id, device_id)
            except NotFound:
                await self._add_credential(
                    CredentialKind.PSK,
                    tenant_id,
                    device_id,
                    cred_id,
                    lookup,
                    value,
                    record,
                    now,
                    unique_record=False,
                )
            else:
                await self._rotate_credential(
                    CredentialKind.PSK, tenant_id, old, cred_id, lookup, value, record, now, None
                )
            return issued

        return await self._audited(actor, tenant_id, "psk.rotate", f"device={device_id}", op)

    async def revoke_psk(self, tenant_id: str, device_id: str, *, actor: str) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            return await self._revoke_credential(await self._active_psk(tenant_id, device_id))

        return await self._audited(actor, tenant_id, "psk.revoke", f"device={device_id}", op)

    # -- certificates --------------------------------------------------------------------
    def _cert_cred(
        self, tenant_id: str, device_id: str, info: certs.CertInfo, now: float
    ) -> tuple[str, str, str, dict[str, str], bool]:
        fp = info.fingerprint
        value = _lookup_value(tenant_id, device_id, fp, na=info.not_after, ss=info.self_signed)
        record = self._record(
            CredentialKind.X509,
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
        )
        return fp, fp, value, record, True

    async def register_cert(
        self, tenant_id: str, device_id: str, pem: str | bytes, *, actor: str
    ) -> CredentialRecord:
        check_tenant_id(tenant_id)

        async def op() -> CredentialRecord:
            await self.get_device(tenant_id, device_id)
            now = self._clock()
            info = certs.parse_device_cert(pem, now=now)
            lookup, cred_id, value, record, unique = self._cert_cred(
                tenant_id, device_id, info, now
            )
            await self._add_credential(
                CredentialKind.X509,
                tenant_id,
                device_id,
                cred_id,
                lookup,
                value,
                record,
                now,
                unique_record=unique,
            )
            rec = await self._credential(cred_id)
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
        start, limit = _page(limit, cursor)
        if device_id is not None:
            records = [
                r
                for r in await self.credentials(tenant_id, device_id)
                if r.kind is CredentialKind.X509
            ]
            page = records[start : start + limit + 1]
        else:
            fps = await self._wrap(
                self._r.zrange(self.keys.tenant_certs(tenant_id), start, start + limit)
            )
            page = [r for r in [await self._credential(fp) for fp in fps] if r is not None]
        more = len(page) > limit
        return page[:limit], (str(start + limit) if more else None)

    # -- shared credential steps -----------------------------------------------------------
    async def _add_credential(
        self,
        kind: CredentialKind,
        tenant_id: str,
        device_id: str,
        credential_id: str,
        lookup: str,
        value: str,
        record: dict[str, str],
        now: float,
        *,
        unique_record: bool,
    ) -> None:
        k = self.keys
        status = await self._eval(
            self._add,
            keys=[
                k.device(device_id),
                k.lookup(kind, lookup),
                k.credential(credential_id),
                k.device_credentials(device_id),
                k.tenant_certs(tenant_id),
            ],
            args=[
                tenant_id,
                kind.value,
                repr(now),
                value,
                credential_id,
                k.bus_channel,
                self._event(
                    EventType.CREATED, kind, lookup, credential_id, tenant_id, device_id, now
                ),
                "1" if unique_record else "0",
                *_flatten(record),
            ],
        )
        self._check_status(status, kind)

    async def _rotate_credential(
        self,
        kind: CredentialKind,
        tenant_id: str,
        old: CredentialRecord,
        new_id: str,
        new_lookup: str,
        new_value: str,
        new_record: dict[str, str],
        now: float,
        expires_at: float | None,
    ) -> None:
        k = self.keys
        device_id = old.device_id
        if expires_at is None:
            old_event = self._event(
                EventType.REVOKED, kind, old.lookup, old.credential_id, tenant_id, device_id, now
            )
            old_value = ""
            expires_ms = "0"
        else:
            old_event = self._event(
                EventType.EXPIRES,
                kind,
                old.lookup,
                old.credential_id,
                tenant_id,
                device_id,
                now,
                expires_at,
            )
            old_value = _lookup_value(tenant_id, device_id, old.credential_id, x=expires_at)
            expires_ms = str(max(1, math.ceil(expires_at * 1000)))
        status = await self._eval(
            self._rotate,
            keys=[
                k.device(device_id),
                k.lookup(kind, new_lookup),
                k.credential(new_id),
                k.device_credentials(device_id),
                k.lookup(kind, old.lookup),
                k.credential(old.credential_id),
            ],
            args=[
                tenant_id,
                device_id,
                kind.value,
                repr(now),
                new_value,
                new_id,
                k.bus_channel,
                self._event(EventType.CREATED, kind, new_lookup, new_id, tenant_id, device_id, now),
                old_event,
                expires_ms,
                old_value,
                *_flatten(new_record),
            ],
        )
        if status in ("old_not_found", "old_not_active"):
            raise FailedPrecondition(
                f"{_kind_noun(kind)} is not active (revoked or already rotated)"
            )
        self._check_status(status, kind)

    async def _revoke_credential(self, rec: CredentialRecord) -> CredentialRecord:
        k = self.keys
        now = self._clock()
        status = await self._eval(
            self._revoke,
            keys=[
                k.credential(rec.credential_id),
                k.lookup(rec.kind, rec.lookup),
                k.device(rec.device_id),
            ],
            args=[
                rec.tenant_id,
                rec.kind.value,
                repr(now),
                k.bus_channel,
                self._event(
                    EventType.REVOKED,
                    rec.kind,
                    rec.lookup,
                    rec.credential_id,
                    rec.tenant_id,
                    rec.device_id,
                    now,
                ),
            ],
        )
        if status == "not_found":
            raise NotFound(f"{_kind_noun(rec.kind)} not found")
        updated = await self._credential(rec.credential_id)
        assert updated is not None
        return updated

    @staticmethod
    def _check_status(status: Any, kind: CredentialKind) -> None:
        if status == "ok":
            return
        if status == "not_found":
            raise NotFound("device not found")
        if status == "wrong_kind":
            raise FailedPrecondition(
                "device uses another credential kind; a device has exactly one "
                f"({kind.value} refused)"
            )
        if status == "conflict":
            if kind is CredentialKind.PSK:
                raise AlreadyExists("PSK identity is already in use")
            if kind is CredentialKind.X509:
                raise AlreadyExists("certificate fingerprint is already registered")
            raise AlreadyExists("credential already exists")
        raise Unavailable("unexpected registry answer", reason=repr(status))

    # -- KEK rotation ---------------------------------------------------------------------
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


def _kind_noun(kind: CredentialKind) -> str:
    return {"api_key": "API key", "psk": "PSK", "x509": "certificate"}[kind.value]


def _page(limit: int, cursor: str | None) -> tuple[int, int]:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is None or cursor == "":
        return 0, limit
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 12:
        raise InvalidArgument("cursor is not valid")
    return int(cursor), limit
