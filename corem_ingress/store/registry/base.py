"""The registry's shared plumbing: auditing, Redis errors, credential events, reads of
devices and credential records, and the three credential steps (add, rotate, revoke)
that every credential kind goes through."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress import metrics
from corem_ingress.core import psk
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
    check_tenant_id,
)
from corem_ingress.store.connection import UNAVAILABLE_ERRORS
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.records import (
    CredentialRecord,
    CredentialWrite,
    kind_noun,
    lookup_value,
    page,
)
from corem_ingress.store.registry.scripts import RegistryScripts

T = TypeVar("T")
Clock = Callable[[], float]

AUDIT_MAXLEN = 1_000_000


class RegistryBase:
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
        self._scripts = RegistryScripts(redis, keys)

    @property
    def redis(self) -> aioredis.Redis:
        """The client the registry writes with (for companions: downlinks, LwM2M store)."""
        return self._r  # type: ignore[no-any-return]

    # -- auditing and errors -------------------------------------------------------------------
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

    async def audit(
        self, actor: str, tenant_id: str, action: str, target: str, outcome: str = "OK"
    ) -> None:
        """Record an operation done outside the registry's own methods (reads, downlinks);
        ``outcome`` is "OK" or the error code it ended with."""
        await self._audit(actor, tenant_id, action, target, outcome)

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

    async def _wrap(self, aw: Awaitable[T]) -> T:
        try:
            return await aw
        except UNAVAILABLE_ERRORS as exc:
            metrics.redis_error("registry")
            raise Unavailable("registry storage is unreachable", reason=str(exc)) from None

    @staticmethod
    def _event(
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

    @classmethod
    def _created_event(cls, tenant_id: str, device_id: str, c: CredentialWrite, now: float) -> str:
        return cls._event(
            EventType.CREATED, c.kind, c.lookup, c.credential_id, tenant_id, device_id, now
        )

    def _require_keyring(self) -> psk.KeyRing:
        if self._keyring is None:
            raise FailedPrecondition(
                "PSK credentials need a key-encryption key: set COREM_PSK_KEK or COREM_PSK_KEK_FILE"
            )
        return self._keyring

    # -- reads ---------------------------------------------------------------------------------
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

    async def list_devices(
        self, tenant_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Device], str | None]:
        check_tenant_id(tenant_id)
        start, limit = page(limit, cursor)
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
        return CredentialRecord.from_hash(data) if data else None

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
            raise NotFound(f"{kind_noun(kind)} not found")
        return rec

    # -- the credential steps every kind goes through ------------------------------------------
    async def _add_credential(
        self, tenant_id: str, device_id: str, c: CredentialWrite, now: float
    ) -> None:
        status = await self._scripts.add_credential(
            tenant_id=tenant_id,
            device_id=device_id,
            credential=c,
            now=now,
            created_event=self._created_event(tenant_id, device_id, c, now),
        )
        self._check_status(status, c.kind)

    async def _rotate_credential(
        self,
        tenant_id: str,
        old: CredentialRecord,
        new: CredentialWrite,
        now: float,
        expires_at: float | None,
    ) -> None:
        device_id = old.device_id
        if expires_at is None:
            old_type, old_value, expires_ms = EventType.REVOKED, "", "0"
        else:
            old_type = EventType.EXPIRES
            old_value = lookup_value(tenant_id, device_id, old.credential_id, x=expires_at)
            expires_ms = str(max(1, math.ceil(expires_at * 1000)))
        status = await self._scripts.rotate(
            tenant_id=tenant_id,
            device_id=device_id,
            new=new,
            old_lookup=old.lookup,
            old_credential_id=old.credential_id,
            now=now,
            created_event=self._created_event(tenant_id, device_id, new, now),
            old_event=self._event(
                old_type,
                new.kind,
                old.lookup,
                old.credential_id,
                tenant_id,
                device_id,
                now,
                expires_at,
            ),
            old_expires_ms=expires_ms,
            old_value=old_value,
        )
        if status in ("old_not_found", "old_not_active"):
            raise FailedPrecondition(
                f"{kind_noun(new.kind)} is not active (revoked or already rotated)"
            )
        self._check_status(status, new.kind)

    async def _revoke_credential(self, rec: CredentialRecord) -> CredentialRecord:
        now = self._clock()
        status = await self._scripts.revoke(
            tenant_id=rec.tenant_id,
            device_id=rec.device_id,
            kind=rec.kind,
            lookup=rec.lookup,
            credential_id=rec.credential_id,
            now=now,
            revoked_event=self._event(
                EventType.REVOKED,
                rec.kind,
                rec.lookup,
                rec.credential_id,
                rec.tenant_id,
                rec.device_id,
                now,
            ),
        )
        if status == "not_found":
            raise NotFound(f"{kind_noun(rec.kind)} not found")
        updated = await self._credential(rec.credential_id)
        assert updated is not None
        return updated

    @staticmethod
    def _check_status(status: str, kind: CredentialKind) -> None:
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
