"""DTLS sessions kept for resumption, shared by the nodes (``adapters/dtls/resume.py``).

Each session is stored under its RFC 5246 session id with a TTL (``coap.resumption.
lifetime_s``), sealed with AES-256-GCM under a key of a rotated key set that the nodes
share in Redis: the key of the current period (``coap.resumption.rotation_s``) is set once
by the first node that needs it (``HSETNX``), and a key is deleted once no session sealed
under it can still live (its period's end plus the lifetime). The record names its key id;
the additional data binds it to its session id. Keys in docs/redis-keys.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.store.keys import KeySchema

_AAD = b"corem-dtls-session|"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DtlsSessionStore:
    def __init__(
        self,
        redis: Any,
        keys: KeySchema,
        *,
        lifetime_s: int,
        rotation_s: int,
        clock: Callable[[], float],
    ) -> None:
        self._r = redis
        self._keys = keys
        self.lifetime_s = lifetime_s
        self.rotation_s = rotation_s
        self._clock = clock
        #: Key id -> key (a key never changes once set: cached for good, pruned with it).
        self._sealing: dict[str, bytes] = {}

    async def save(self, session_id: bytes, session: StoredSession) -> None:
        kid, key = await self._current_key()
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, _plaintext(session), _aad(session_id, kid))
        record = json.dumps({"kid": kid, "nonce": nonce.hex(), "sealed": sealed.hex()})
        await self._r.set(self._keys.dtls_session(session_id.hex()), record, ex=self.lifetime_s)

    async def load(self, session_id: bytes) -> StoredSession | None:
        """The session, or None: expired, never stored here, its key gone, or tampered."""
        raw = await self._r.get(self._keys.dtls_session(session_id.hex()))
        if raw is None:
            return None
        try:
            record = json.loads(_text(raw))
            kid = str(record["kid"])
            key = await self._key(kid)
            if key is None:
                return None
            plain = AESGCM(key).decrypt(
                bytes.fromhex(record["nonce"]),
                bytes.fromhex(record["sealed"]),
                _aad(session_id, kid),
            )
            return _session(plain)
        except (ValueError, KeyError, TypeError, InvalidTag):
            return None

    async def delete(self, session_id: bytes) -> None:
        await self._r.delete(self._keys.dtls_session(session_id.hex()))

    async def _current_key(self) -> tuple[str, bytes]:
        now = self._clock()
        kid = str(int(now // self.rotation_s))
        key = self._sealing.get(kid)
        if key is not None:
            return kid, key
        if await self._r.hsetnx(self._keys.dtls_session_keys, kid, os.urandom(32).hex()):
            await self._prune(now)  # the first node of a new period drops dead keys
        key = await self._key(kid)
        if key is None:  # cannot happen: set just above
            raise RuntimeError("dtls session key vanished")
        return kid, key

    async def _key(self, kid: str) -> bytes | None:
        if not kid.isdigit() or self._dead(int(kid), self._clock()):
            self._sealing.pop(kid, None)
            return None
        key = self._sealing.get(kid)
        if key is None:
            raw = await self._r.hget(self._keys.dtls_session_keys, kid)
            if raw is None:
                return None
            key = self._sealing[kid] = bytes.fromhex(_text(raw))
        return key

    async def _prune(self, now: float) -> None:
        """Keys under which no session can still live: their period ended more than a
        lifetime ago."""
        name = self._keys.dtls_session_keys
        dead = [
            kid
            for kid in (_text(k) for k in await self._r.hkeys(name))
            if kid.isdigit() and self._dead(int(kid), now)
        ]
        if dead:
            await self._r.hdel(name, *dead)
            for kid in dead:
                self._sealing.pop(kid, None)

    def _dead(self, kid: int, now: float) -> bool:
        """No session sealed under key ``kid`` can still live."""
        return (kid + 1) * self.rotation_s + self.lifetime_s < now


def _aad(session_id: bytes, kid: str) -> bytes:
    return _AAD + session_id + b"|" + kid.encode()


def _plaintext(session: StoredSession) -> bytes:
    return json.dumps(
        {
            "suite": session.suite,
            "master": session.master.hex(),
            "ems": session.extended_master_secret,
            "kind": session.kind,
            "lookup": session.lookup,
            "chain": list(session.chain),
            "secret_digest": session.secret_digest.hex(),
            "not_after": session.not_after,
            "certificate": session.certificate.hex(),
        }
    ).encode()


def _session(plain: bytes) -> StoredSession:
    d = json.loads(plain)
    return StoredSession(
        suite=int(d["suite"]),
        master=bytes.fromhex(d["master"]),
        extended_master_secret=bool(d["ems"]),
        kind=str(d["kind"]),
        lookup=str(d["lookup"]),
        chain=tuple(str(c) for c in d["chain"]),
        secret_digest=bytes.fromhex(d["secret_digest"]),
        not_after=float(d["not_after"]),
        certificate=bytes.fromhex(d.get("certificate", "")),
    )
