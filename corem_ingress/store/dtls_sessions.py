"""DTLS sessions kept for resumption, shared by the nodes (``adapters/dtls/resume.py``).

Each session is stored under its RFC 5246 session id with a TTL (``coap.resumption.
lifetime_s``), sealed with AES-256-GCM under a key of a rotated key set that the nodes
share in Redis: the key of the current period (``coap.resumption.rotation_s``) is set once
by the first node that needs it (``HSETNX``), and a key is deleted once no session sealed
under it can still live (its period's end plus the lifetime). The record names its key id;
the additional data binds it to its session id. Keys in docs/redis-keys.md.

The sessions of full handshakes are queued (``queue``: synchronous, never on Redis) and
written by one background writer (``run_writer``) in one pipeline per ~20 ms batch
(``store/batching.py``): one redis-py round trip per handshake was most of what issuing a
resumable session cost (issue 18). Until its batch is written a session is resumable on
this node only (``load`` reads the queue first). Bounded: past ``max_pending`` queued
sessions the oldest are dropped (counted); a failed write is logged and counted, the
devices pay a full handshake next time. ``delete`` drops a queued save and waits for a
batch being written, so a save never lands after the delete of its session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corem_ingress import metrics
from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.store.batching import GatheredWrites
from corem_ingress.store.keys import KeySchema

log = structlog.get_logger("corem.dtls")

_AAD = b"corem-dtls-session|"
#: Queued sessions beyond this drop the oldest (Redis slow or away: memory stays bounded).
MAX_PENDING = 10_000


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
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._r = redis
        self._keys = keys
        self.lifetime_s = lifetime_s
        self.rotation_s = rotation_s
        self._clock = clock
        #: Key id -> key (a key never changes once set: cached for good, pruned with it).
        self._sealing: dict[str, bytes] = {}
        self.max_pending = max_pending
        #: Sessions queued for the next batch (oldest first), and the batch being written.
        self._pending: dict[bytes, StoredSession] = {}
        self._writing: dict[bytes, StoredSession] = {}
        # Any failure is counted and logged, and the writer goes on (a session not stored
        # costs its device a full handshake, never a failed one).
        self._writes = GatheredWrites(
            self._take, self._write, self._write_failed, errors=(Exception,)
        )
        #: Batches written, and sessions never stored (by reason: queue_full, store_failed).
        self.writes = 0
        self.not_stored: dict[str, int] = {}

    async def save(self, session_id: bytes, session: StoredSession) -> None:
        """Store one session now (one round trip; the listener queues instead)."""
        kid, key = await self._current_key()
        await self._r.set(
            self._keys.dtls_session(session_id.hex()),
            _record(session_id, session, kid, key),
            ex=self.lifetime_s,
        )

    def queue(self, session_id: bytes, session: StoredSession) -> None:
        """Store ``session`` with the next batch (``run_writer`` writes it)."""
        pending = self._pending
        if len(pending) >= self.max_pending and session_id not in pending:
            del pending[next(iter(pending))]
            self._lost("queue_full", 1)
        pending[session_id] = session
        self._writes.wake()

    async def run_writer(self) -> None:
        await self._writes.run()

    async def flush(self) -> None:
        """Write the queued sessions now (a clean stop)."""
        await self._writes.write_now()

    def _take(self) -> dict[bytes, StoredSession]:
        self._writing, self._pending = self._pending, {}
        return self._writing

    async def _write(self, batch: dict[bytes, StoredSession]) -> None:
        try:
            kid, key = await self._current_key()
            # After that await: the sessions deleted meanwhile are gone from the batch.
            records = [
                (self._keys.dtls_session(sid.hex()), _record(sid, session, kid, key))
                for sid, session in batch.items()
            ]
            if not records:
                return
            if len(records) == 1:  # one SET costs less than a pipeline of one (low rates)
                await self._r.set(*records[0], ex=self.lifetime_s)
            else:
                pipe = self._r.pipeline(transaction=False)
                for name, record in records:
                    pipe.set(name, record, ex=self.lifetime_s)
                await pipe.execute()
            self.writes += 1
        finally:
            self._writing = {}

    def _write_failed(self, batch: dict[bytes, StoredSession], exc: Exception) -> None:
        # Redis down: these devices pay a full handshake next time.
        log.warning("dtls.session_store_failed", error=str(exc), sessions=len(batch))
        self._lost("store_failed", len(batch))

    def _lost(self, reason: str, n: int) -> None:
        self.not_stored[reason] = self.not_stored.get(reason, 0) + n
        metrics.dtls_sessions_not_stored(reason, n)

    async def load(self, session_id: bytes) -> StoredSession | None:
        """The session, or None: expired, never stored here, its key gone, or tampered."""
        queued = self._pending.get(session_id)
        if queued is None:
            queued = self._writing.get(session_id)
        if queued is not None:  # issued here moments ago, its batch not written yet
            return queued
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
        # A queued save never happens; one being written lands first, then the DEL.
        self._pending.pop(session_id, None)
        self._writing.pop(session_id, None)
        async with self._writes.lock:
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


def _record(session_id: bytes, session: StoredSession, kid: str, key: bytes) -> str:
    """The stored value: ``session`` sealed under key ``kid``, bound to its id."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, _plaintext(session), _aad(session_id, kid))
    return json.dumps({"kid": kid, "nonce": nonce.hex(), "sealed": sealed.hex()})


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
