"""One typed wrapper per Lua script of the registry (``store/lua/*.lua``).

Each wrapper names its KEYS and ARGV instead of callers building positional lists:
the scripts write the records and PUBLISH the credential event in one step, so a
change and its event cannot diverge.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.records import CredentialWrite


@functools.cache
def _source(name: str) -> str:
    """Read once per process: stores are built per request in places (an admin downlink)."""
    return resources.files("corem_ingress.store").joinpath(f"lua/{name}.lua").read_text()


class _Script:
    """A script of ``store/lua/<name>.lua``, or the ``source`` given (short inline ones)."""

    def __init__(self, r: Any, name: str = "", *, source: str | None = None) -> None:
        self._r = r
        self._script = r.register_script(_source(name) if source is None else source)

    async def __call__(self, keys: list[str], args: list[str | int | float]) -> Any:
        """EVALSHA, or EVAL when the server lacks the script.

        Both are routed by the keys, so on a cluster only the node serving the slot is asked;
        redis-py's own fallback would SCRIPT LOAD on every master, which fails while one of
        them is down (docs/reliability.md).
        """
        try:
            return await self._r.evalsha(self._script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self._r.eval(self._script.script, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: list[str], args: list[str | int | float]) -> None:
        """EVALSHA into a pipeline (its ``execute`` raises NoScriptError when the server
        lacks the script: the caller falls back to ``__call__``)."""
        pipe.evalsha(self._script.sha, len(keys), *keys, *args)


class RegistryScripts:
    def __init__(self, r: aioredis.Redis, keys: KeySchema) -> None:
        self.keys = keys
        self._provision = _Script(r, "provision")
        self._add = _Script(r, "add_credential")
        self._rotate = _Script(r, "rotate")
        self._revoke = _Script(r, "revoke")
        self._ca_add = _Script(r, "ca_add")
        self._ca_remove = _Script(r, "ca_remove")
        self._tenant_settings = _Script(r, "tenant_settings")
        self._challenge_new = _Script(r, "challenge_new")

    async def provision(
        self,
        *,
        device_id: str,
        tenant_id: str,
        hardware_id: str,
        kind: CredentialKind,
        now: float,
        credential: CredentialWrite | None,
        created_event: str,
    ) -> tuple[str, str]:
        """("created" | "existing" | "conflict", device_id of the winner)."""
        k = self.keys
        anchor = k.hardware(tenant_id, hardware_id)
        c = credential
        status, value = await self._provision(
            keys=[
                anchor,
                k.device(device_id),
                k.tenant_devices(tenant_id),
                k.lookup(kind, c.lookup) if c else anchor,
                k.credential(c.credential_id) if c else anchor,
                k.device_credentials(device_id),
                k.tenant_certs(tenant_id),
            ],
            args=[
                device_id,
                tenant_id,
                hardware_id,
                kind.value,
                repr(now),
                "1" if c else "0",
                c.value if c else "",
                c.credential_id if c else "",
                k.bus_channel,
                created_event,
                "1" if c and c.unique else "0",
                *(c.record_args() if c else []),
            ],
        )
        return str(status), str(value)

    async def add_credential(
        self,
        *,
        tenant_id: str,
        device_id: str,
        credential: CredentialWrite,
        now: float,
        created_event: str,
    ) -> str:
        """ "ok" | "not_found" | "wrong_kind" | "conflict"."""
        k = self.keys
        c = credential
        status = await self._add(
            keys=[
                k.device(device_id),
                k.lookup(c.kind, c.lookup),
                k.credential(c.credential_id),
                k.device_credentials(device_id),
                k.tenant_certs(tenant_id),
            ],
            args=[
                tenant_id,
                c.kind.value,
                repr(now),
                c.value,
                c.credential_id,
                k.bus_channel,
                created_event,
                "1" if c.unique else "0",
                *c.record_args(),
            ],
        )
        return str(status)

    async def rotate(
        self,
        *,
        tenant_id: str,
        device_id: str,
        new: CredentialWrite,
        old_lookup: str,
        old_credential_id: str,
        now: float,
        created_event: str,
        old_event: str,
        old_expires_ms: str,
        old_value: str,
    ) -> str:
        """ "ok" | "not_found" | "wrong_kind" | "old_not_found" | "old_not_active" | "conflict".

        ``old_expires_ms`` "0": the old credential stops now; otherwise it keeps resolving
        (with ``old_value``) until then, enforced by Redis itself (PEXPIREAT).
        """
        k = self.keys
        status = await self._rotate(
            keys=[
                k.device(device_id),
                k.lookup(new.kind, new.lookup),
                k.credential(new.credential_id),
                k.device_credentials(device_id),
                k.lookup(new.kind, old_lookup),
                k.credential(old_credential_id),
            ],
            args=[
                tenant_id,
                device_id,
                new.kind.value,
                repr(now),
                new.value,
                new.credential_id,
                k.bus_channel,
                created_event,
                old_event,
                old_expires_ms,
                old_value,
                *new.record_args(),
            ],
        )
        return str(status)

    async def revoke(
        self,
        *,
        tenant_id: str,
        device_id: str,
        kind: CredentialKind,
        lookup: str,
        credential_id: str,
        now: float,
        revoked_event: str,
    ) -> str:
        """ "revoked" | "already" | "not_found"."""
        k = self.keys
        status = await self._revoke(
            keys=[k.credential(credential_id), k.lookup(kind, lookup), k.device(device_id)],
            args=[tenant_id, kind.value, repr(now), k.bus_channel, revoked_event],
        )
        return str(status)

    async def ca_add(
        self,
        *,
        tenant_id: str,
        fingerprint: str,
        now: float,
        max_cas: int,
        record: dict[str, str],
        trust_event: str,
    ) -> str:
        """ "added" | "existing" | "full"."""
        k = self.keys
        status = await self._ca_add(
            keys=[k.tenant_ca(tenant_id, fingerprint), k.tenant_cas(tenant_id)],
            args=[
                fingerprint,
                repr(now),
                str(max_cas),
                k.bus_channel,
                trust_event,
                *(item for pair in record.items() for item in pair),
            ],
        )
        return str(status)

    async def ca_remove(
        self, *, tenant_id: str, fingerprint: str, trust_event: str
    ) -> dict[str, str]:
        """The removed CA's record; empty when the tenant has no such CA."""
        k = self.keys
        flat = await self._ca_remove(
            keys=[k.tenant_ca(tenant_id, fingerprint), k.tenant_cas(tenant_id)],
            args=[fingerprint, k.bus_channel, trust_event],
        )
        items = [str(x) for x in flat]
        return dict(zip(items[::2], items[1::2], strict=True))

    async def tenant_setting(
        self, *, tenant_id: str, field: str, value: str, trust_event: str
    ) -> None:
        k = self.keys
        await self._tenant_settings(
            keys=[k.tenant_settings(tenant_id)],
            args=[field, value, k.bus_channel, trust_event],
        )

    async def challenge_new(
        self, *, tenant_id: str, token: str, now: float, ttl_s: int, max_outstanding: int
    ) -> float | None:
        """None when issued; else the expiry (epoch s) of the tenant's oldest challenge."""
        k = self.keys
        status, oldest = await self._challenge_new(
            keys=[k.challenge(token), k.tenant_challenges(tenant_id)],
            args=[tenant_id, token, repr(now), str(ttl_s), str(max_outstanding)],
        )
        return None if status == "ok" else float(oldest)
