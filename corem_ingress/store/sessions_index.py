"""The live sessions of every node, in Redis, for operators: who is connected, over which
transport, to which node, since when, from which address.

Each node writes its own sessions, one hash per (node, tenant) so that a tenant's listing
reads only its own entries, and marks itself alive in a sorted set by a heartbeat. The
hashes expire after three heartbeat intervals: a node that dies drops out of the index on
its own, and readers also skip nodes whose heartbeat is older than that.

Changes (a session registered or gone) are queued by the ``SessionHub`` (synchronous, never
on Redis) and written by one background writer in pipelines (``store/batching.py``): it
lets changes gather for ``WRITE_DELAY_S`` after the first one, keeps each session's last
change, and skips a session that came and went within one batch (a handshake then a close:
no Redis command at all), so a burst of short sessions costs a few pipelines rather than
two each. If a write
fails or the queue overflows, the next heartbeat rewrites this node's entries in full from
its local view, so the index converges after an outage. Bounded: at most ``max_entries``
sessions per node.

Operator disconnects are routed over pub/sub to the node that holds the session
(``sessions_channel``); that node checks the tenant before it closes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from corem_ingress.core.errors import Unavailable
from corem_ingress.core.sessions import LiveSession
from corem_ingress.store.batching import REDIS_ERRORS as _REDIS_ERRORS
from corem_ingress.store.batching import GatheredWrites
from corem_ingress.store.keys import KeySchema
from corem_ingress.tasks import still_running

log = structlog.get_logger("corem.sessions_index")

#: Queued changes beyond this are dropped in favour of one full rewrite.
MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class DisconnectRequest:
    """An operator's disconnect, as published for the owning node."""

    node_id: str
    tenant_id: str
    session_id: str

    def encode(self) -> str:
        return json.dumps(
            {"node_id": self.node_id, "tenant_id": self.tenant_id, "session_id": self.session_id}
        )

    @classmethod
    def decode(cls, data: bytes | str) -> DisconnectRequest:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) for k in ("node_id", "tenant_id", "session_id")
        ):
            raise ValueError("malformed disconnect request")
        return cls(doc["node_id"], doc["tenant_id"], doc["session_id"])


def session_entry(session: LiveSession, node_id: str, since: float) -> dict[str, Any]:
    """What the index keeps of a session (no secret: the credential's id, not its lookup)."""
    ident = session.identity
    return {
        "session_id": session.session_id,
        "tenant_id": ident.tenant_id,
        "device_id": ident.device_id,
        "transport": session.transport,
        "node_id": node_id,
        "since": round(since, 3),
        "peer": session.peer,
        "credential_kind": ident.credential_kind.value,
        "credential_id": ident.credential_id,
    }


def coalesce(
    batch: list[tuple[str, str, dict[str, Any] | None]],
) -> tuple[dict[tuple[str, str], dict[str, Any] | None], int]:
    """Each session's last change in ``batch`` (in first-change order), leaving out the
    sessions added and removed within it (never written: nothing to delete), and how many
    were left out. A removal alone stays (its entry was written by an earlier batch)."""
    last: dict[tuple[str, str], dict[str, Any] | None] = {}
    added: set[tuple[str, str]] = set()
    for tenant, session_id, entry in batch:
        key = (tenant, session_id)
        if entry is not None and key not in last:
            added.add(key)
        last[key] = entry
    gone = [k for k in added if last[k] is None]
    for key in gone:
        del last[key]
    return last, len(gone)


class SessionsIndexWriter:
    """One node's side: mirrors the node's live sessions into Redis."""

    def __init__(
        self,
        redis: Any,
        keys: KeySchema,
        node_id: str,
        *,
        interval_s: float,
        max_entries: int,
        status: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        self._keys = keys
        self._node = node_id
        self.interval_s = interval_s
        self._max = max_entries
        self._status = status
        self._clock = clock
        #: This node's view: tenant -> session_id -> entry (the source of a full rewrite).
        self._local: dict[str, dict[str, dict[str, Any]]] = {}
        self._count = 0
        #: Changes to write: (tenant, session id, entry; None: gone). Serialised by the writer.
        self._pending: list[tuple[str, str, dict[str, Any] | None]] = []
        self._dirty = True  # the first heartbeat writes everything
        #: Tenants this node has written a hash for (a full rewrite deletes those now empty).
        self._written: set[str] = set()
        #: Changes gather for a few ms, then one pipeline (``store/batching.py``); its lock
        #: also serialises the heartbeat's full rewrites.
        self._writes = GatheredWrites(self._take, self._write_changes, self._write_failed)
        self._warned_full = False
        self.heartbeats = 0
        self.writes = 0
        #: Sessions that came and went within one batch (never written).
        self.sessions_skipped = 0

    def __len__(self) -> int:
        return self._count

    # -- called by the SessionHub (synchronous) ----------------------------------------------
    def added(self, session: LiveSession) -> None:
        tenant = session.identity.tenant_id
        sessions = self._local.setdefault(tenant, {})
        if session.session_id not in sessions:
            if self._count >= self._max:
                if not self._warned_full:
                    self._warned_full = True
                    log.warning("sessions_index.full", max_entries=self._max)
                return
            self._count += 1
        entry = session_entry(session, self._node, self._clock())
        sessions[session.session_id] = entry
        self._written.add(tenant)
        self._queue(tenant, session.session_id, entry)

    def removed(self, tenant_id: str, session_id: str) -> None:
        sessions = self._local.get(tenant_id)
        if sessions is None or sessions.pop(session_id, None) is None:
            return
        self._count -= 1
        if not sessions:
            del self._local[tenant_id]
        self._queue(tenant_id, session_id, None)

    def _queue(self, tenant: str, session_id: str, entry: dict[str, Any] | None) -> None:
        if self._dirty:
            return  # the next heartbeat rewrites everything anyway
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()
            self._dirty = True
            return
        self._pending.append((tenant, session_id, entry))
        self._writes.wake()

    # -- background ---------------------------------------------------------------------------
    @property
    def _ttl_ms(self) -> int:
        return max(1, int(3 * self.interval_s * 1000))

    async def run_writer(self) -> None:
        """Writes queued changes as they come (one pipeline per batch)."""
        await self._writes.run()

    def _take(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        batch, self._pending = self._pending, []
        return batch

    def _write_failed(self, batch: object, exc: Exception) -> None:
        log.warning("sessions_index.write_failed", error=str(exc))
        self._dirty = True

    async def _write_changes(self, batch: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        last, written = coalesce(batch)
        if not last:
            return
        pipe = self._r.pipeline(transaction=False)
        refreshed: set[str] = set()
        for (tenant, session_id), entry in last.items():
            key = self._keys.node_sessions(self._node, tenant)
            if entry is None:
                pipe.hdel(key, session_id)
            else:
                pipe.hset(key, session_id, json.dumps(entry))
                if key not in refreshed:
                    refreshed.add(key)
                    pipe.pexpire(key, self._ttl_ms)
        await pipe.execute()
        self.writes += 1
        self.sessions_skipped += written

    async def run_heartbeat(self) -> None:
        while still_running():
            try:
                await self.heartbeat()
            except _REDIS_ERRORS as exc:
                log.warning("sessions_index.heartbeat_failed", error=str(exc))
                self._dirty = True
            await asyncio.sleep(self.interval_s)

    async def heartbeat(self) -> None:
        # One write at a time: a full rewrite built from the local view must not land after
        # a change the writer made meanwhile (it would bring a gone session back).
        async with self._writes.lock:
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        now = self._clock()
        keys, ttl = self._keys, self._ttl_ms
        rewrite = self._dirty
        if rewrite:
            self._dirty = False
            self._pending.clear()
        # Not a MULTI: redis-py's cluster pipeline in transaction mode left connections that
        # failed the client's close (tests/ops/test_redis_topologies.py). The DEL and HSET
        # of a rewrite go in one batch: a reader may, rarely, miss the node's entries for
        # that instant.
        pipe = self._r.pipeline(transaction=False)
        refreshes: list[int] = []  # positions of the PEXPIREs in the pipeline's replies
        for tenant, sessions in self._local.items():
            key = keys.node_sessions(self._node, tenant)
            if rewrite:
                pipe.delete(key)
                pipe.hset(key, mapping={sid: json.dumps(e) for sid, e in sessions.items()})
            refreshes.append(len(pipe))
            pipe.pexpire(key, ttl)
        if rewrite:
            # Tenants whose last session went while Redis was away: drop their hashes.
            for tenant in self._written - self._local.keys():
                pipe.delete(keys.node_sessions(self._node, tenant))
            self._written = set(self._local)
        pipe.zadd(keys.sessions_nodes, {self._node: now})
        pipe.zremrangebyscore(keys.sessions_nodes, "-inf", now - 3 * self.interval_s)
        if self._status is not None:
            status = {"node_id": self._node, "at": round(now, 3), **self._status()}
            pipe.set(keys.node_status(self._node), json.dumps(status), px=ttl)
        try:
            replies = await pipe.execute()
        except BaseException:
            self._dirty = True
            raise
        self.heartbeats += 1
        if not rewrite and not all(replies[i] for i in refreshes):
            # A hash expired (this node was too slow to beat in time: a stalled event loop,
            # Redis away): its entries are gone, so write them all again now.
            log.warning("sessions_index.expired_rewrite", node=self._node)
            self._dirty = True
            await self._heartbeat()

    async def leave(self) -> None:
        """A clean stop: this node's entries go at once (a dead node's expire)."""
        keys = self._keys
        async with self._writes.lock:
            pipe = self._r.pipeline(transaction=False)
            for tenant in self._written | self._local.keys():
                pipe.delete(keys.node_sessions(self._node, tenant))
            pipe.zrem(keys.sessions_nodes, self._node)
            pipe.delete(keys.node_status(self._node))
            await pipe.execute()


class SessionsIndex:
    """The readers' side (admin API, CLI): live sessions of a tenant on every live node."""

    def __init__(
        self,
        redis: Any,
        keys: KeySchema,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        self._keys = keys
        self.interval_s = interval_s
        self._clock = clock

    async def live_nodes(self) -> list[str]:
        stale = self._clock() - 3 * self.interval_s
        try:
            return [
                str(n)
                for n in await self._r.zrangebyscore(self._keys.sessions_nodes, stale, "+inf")
            ]
        except _REDIS_ERRORS as exc:
            raise Unavailable("the sessions index is unavailable", reason=str(exc)) from None

    async def of_tenant(
        self,
        tenant_id: str,
        *,
        device_id: str | None = None,
        transport: str | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The tenant's sessions (newest first), and whether more matched than ``limit``."""
        nodes = await self.live_nodes()
        try:
            pipe = self._r.pipeline(transaction=False)
            for node in nodes:
                pipe.hgetall(self._keys.node_sessions(node, tenant_id))
            replies = await pipe.execute() if nodes else []
        except _REDIS_ERRORS as exc:
            raise Unavailable("the sessions index is unavailable", reason=str(exc)) from None
        found: list[dict[str, Any]] = []
        for reply in replies:
            for raw in reply.values():
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if entry.get("tenant_id") != tenant_id:
                    continue
                if device_id is not None and entry.get("device_id") != device_id:
                    continue
                if transport is not None and entry.get("transport") != transport:
                    continue
                found.append(entry)
        found.sort(key=lambda e: (-float(e.get("since", 0)), str(e.get("session_id"))))
        return found[:limit], len(found) > limit

    async def find(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        """The tenant's session ``session_id`` on any live node (None: not the tenant's or
        gone)."""
        nodes = await self.live_nodes()
        try:
            pipe = self._r.pipeline(transaction=False)
            for node in nodes:
                pipe.hget(self._keys.node_sessions(node, tenant_id), session_id)
            replies = await pipe.execute() if nodes else []
        except _REDIS_ERRORS as exc:
            raise Unavailable("the sessions index is unavailable", reason=str(exc)) from None
        for raw in replies:
            if raw is not None:
                entry: dict[str, Any] = json.loads(raw)
                return entry
        return None

    async def request_disconnect(self, entry: dict[str, Any]) -> None:
        request = DisconnectRequest(entry["node_id"], entry["tenant_id"], entry["session_id"])
        try:
            await self._r.publish(self._keys.sessions_channel, request.encode())
        except _REDIS_ERRORS as exc:
            raise Unavailable("could not reach the session's node", reason=str(exc)) from None

    async def wait_gone(self, entry: dict[str, Any], timeout_s: float) -> bool:
        """Whether the session left the index within ``timeout_s`` (its node closed it)."""
        key = self._keys.node_sessions(entry["node_id"], entry["tenant_id"])
        deadline = self._clock() + timeout_s
        while True:
            try:
                if not await self._r.hexists(key, entry["session_id"]):
                    return True
            except _REDIS_ERRORS:
                return False
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def nodes(self, tenant_id: str) -> list[dict[str, Any]]:
        """Each live node's shared status, and the tenant's sessions on it per transport."""
        nodes = await self.live_nodes()
        try:
            pipe = self._r.pipeline(transaction=False)
            for node in nodes:
                pipe.get(self._keys.node_status(node))
                pipe.hvals(self._keys.node_sessions(node, tenant_id))
            replies = await pipe.execute() if nodes else []
        except _REDIS_ERRORS as exc:
            raise Unavailable("the sessions index is unavailable", reason=str(exc)) from None
        out: list[dict[str, Any]] = []
        for i, node in enumerate(nodes):
            raw_status, values = replies[2 * i], replies[2 * i + 1]
            status: dict[str, Any] = {"node_id": node}
            if raw_status:
                with contextlib.suppress(ValueError):
                    status.update(json.loads(raw_status))
            per_transport: dict[str, int] = {}
            for raw in values:
                try:
                    transport = str(json.loads(raw).get("transport"))
                except ValueError:
                    continue
                per_transport[transport] = per_transport.get(transport, 0) + 1
            status["tenant_sessions"] = per_transport
            out.append(status)
        return out


def disconnect_listener(
    node_id: str, disconnect: Callable[[str, str], bool]
) -> Callable[[bytes | str], None]:
    """The bus handler of ``sessions_channel``: ``disconnect(tenant_id, session_id)`` for the
    requests addressed to this node (the others are another node's)."""

    def on_message(data: bytes | str) -> None:
        try:
            request = DisconnectRequest.decode(data)
        except ValueError as exc:
            log.error("sessions_index.bad_disconnect", error=str(exc))
            return
        if request.node_id != node_id:
            return
        done = disconnect(request.tenant_id, request.session_id)
        log.info(
            "sessions.operator_disconnect",
            session=request.session_id,
            tenant=request.tenant_id,
            found=done,
        )

    return on_message
