"""The first authentication of a credential a claim issued (``store/registry/claims.py``).

Such a credential's lookup value carries a pending mark (``pe``: the hardware_id it was
enrolled for). While it does, a retry of the enrolment re-issues the credential; the first
time the resolver reads it from Redis, it drops the mark and records the first use on the
enrolment, in one Lua step, before the credential authenticates anything. Later reads (any
node) find no mark: the cost is one script per issued credential, once.
"""

from __future__ import annotations

import json
from typing import Any

from corem_ingress.core.claims import PENDING_FIELD, is_pending
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.scripts import _Script


class FirstUse:
    def __init__(self, redis: Any, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys
        self._script = _Script(redis, "claim_first_use")

    async def mark(self, lookup_key: str, raw: str, now: float) -> str | None:
        """The value without the mark, as stored now (None: the credential was replaced or
        revoked meanwhile, so it must not authenticate)."""
        value = json.loads(raw)
        hardware_id = value.pop(PENDING_FIELD, None)
        if hardware_id is None:
            return raw
        plain = json.dumps(value, separators=(",", ":"))
        status = await self._script(
            [lookup_key, self._keys.enrolment(str(value["t"]), str(hardware_id))],
            [raw, plain, repr(now), str(value["c"])],
        )
        if status == "ok":
            return plain
        current: str | None = await self._r.get(lookup_key)
        if current is None or is_pending(current):
            return None
        return current  # another node marked it first
