"""Glue between the bus, the resolver cache and the adapters' live sessions on this node.

Adapters register a session with a ``disconnect`` callable; a revocation event
(or an overlap end, or a failed re-validation) turns into DisconnectOrders from
the pure SessionRegistry, and the hub calls each session's ``disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from corem_ingress import metrics
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unauthenticated, Unavailable
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.sessions import DisconnectOrder, LiveSession, SessionRegistry
from corem_ingress.resolver import Resolver

log = structlog.get_logger("corem.sessions")

Disconnect = Callable[[DisconnectOrder], Awaitable[None] | None]


class SessionsMirror(Protocol):
    """Told of every session that starts or ends here (``store/sessions_index.py``)."""

    def added(self, session: LiveSession) -> None: ...

    def removed(self, tenant_id: str, session_id: str) -> None: ...


class SessionHub:
    def __init__(self, resolver: Resolver, *, clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.registry = SessionRegistry()
        self._clock = clock
        self._closers: dict[str, Disconnect] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Observers of every order carried out (metrics, tests, the simulator's node).
        self.observers: list[Callable[[DisconnectOrder], None]] = []
        self._revalidation: asyncio.Task[object] | None = None
        #: After a gap, how many times (and how far apart) Redis is asked about a session
        #: before it is disconnected -- unless the outage grace covers it.
        self.revalidate_attempts = 20
        self.revalidate_delay_s = 0.5
        #: The node's entry in the cross-node sessions index (None: not kept).
        self.mirror: SessionsMirror | None = None

    def __len__(self) -> int:
        return len(self.registry)

    def register(self, session: LiveSession, disconnect: Disconnect) -> None:
        if session.credential_expires_at is None:
            expiry = self.resolver.credential_expiry(
                session.identity.credential_kind, session.lookup
            )
            if expiry is not None:
                session = dataclasses.replace(session, credential_expires_at=expiry)
        self.registry.register(session)
        self._closers[session.session_id] = disconnect
        if self.mirror is not None:
            self.mirror.added(session)
        if session.credential_expires_at is not None:
            self._wake.set()

    async def register_verified(self, session: LiveSession, disconnect: Disconnect) -> None:
        """Register, then ask the resolver again: a revocation that landed between the
        caller's lookup and this registration evicted the cache entry, and any later one
        now reaches the session. Raises (and unregisters) if the credential no longer
        resolves."""
        self.register(session, disconnect)
        try:
            await self._check(session)
        except Exception:
            self.unregister(session.session_id)
            raise

    def unregister(self, session_id: str) -> None:
        session = self.registry.unregister(session_id)
        self._closers.pop(session_id, None)
        if session is not None and self.mirror is not None:
            self.mirror.removed(session.identity.tenant_id, session_id)

    def disconnect_session(self, tenant_id: str, session_id: str, cause: Cause) -> bool:
        """An operator's disconnect of one session of ``tenant_id`` held here (the credential
        stays valid). False if no such session of that tenant is here."""
        session = self.registry.get(session_id)
        if session is None or session.identity.tenant_id != tenant_id:
            return False
        self._execute(self.registry.revoke_sessions([session_id], cause))
        return True

    # -- events ------------------------------------------------------------------------------
    def on_event(self, event: CredentialEvent) -> None:
        self.resolver.apply_event(event)
        if event.type is EventType.REVOKED:
            orders = self.registry.revoke(event.kind, event.credential_id, Cause.CREDENTIAL_REVOKED)
            self._execute(orders)
            metrics.revocation_received(
                event.kind.value, disconnected=len(orders), latency_s=self._clock() - event.at
            )
        elif event.type is EventType.EXPIRES and event.expires_at is not None:
            self.registry.set_credential_expiry(event.kind, event.credential_id, event.expires_at)
            self._wake.set()
        elif event.type is EventType.TRUST:
            # A CA removed or self-signed devices turned off: the tenant's certificate
            # sessions are checked again (the resolver has dropped the tenant's trust).
            sessions = self.registry.sessions_of_tenant(event.tenant_id, CredentialKind.X509)
            if sessions:
                task = asyncio.ensure_future(self.revalidate(sessions))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def resync(self, gap_started_at: float | None = None) -> None:
        """After a bus gap (it began at ``gap_started_at``, default now): stop trusting the
        cache (the outage grace keeps its fallbacks), then re-validate every live session."""
        previous, self._revalidation = self._revalidation, asyncio.current_task()
        if previous is not None and not previous.done():
            previous.cancel()  # a newer gap: start over
        self.resolver.begin_outage(self._clock() if gap_started_at is None else gap_started_at)
        await self.revalidate()

    async def _check(self, session: LiveSession, *, fallback: bool = True) -> None:
        await self.resolver.resolve_lookup(
            session.identity.credential_kind,
            session.lookup,
            chain=session.chain,
            fallback=fallback,
        )

    async def revalidate(
        self,
        sessions: list[LiveSession] | None = None,
        *,
        attempts: int | None = None,
        delay: float | None = None,
        max_delay: float = 5.0,
    ) -> None:
        """Ask Redis about ``sessions``' credentials (default: every live session's);
        disconnect those no longer valid.

        Sessions Redis cannot vouch for within ``attempts`` are disconnected (fail closed),
        except those the outage grace covers: they stay, and are asked about until Redis
        answers. Ends the outage (drops the grace's fallbacks) once Redis has answered.
        """
        attempts = self.revalidate_attempts if attempts is None else attempts
        delay = self.revalidate_delay_s if delay is None else delay
        pending = self.registry.sessions() if sessions is None else sessions
        attempt = 0
        while True:
            answered = await self.resolver.redis_answers()
            unreachable: list[LiveSession] = []
            for s in pending:
                if s.session_id not in self.registry:
                    continue
                if not answered:
                    unreachable.append(s)
                    continue
                try:
                    await self._check(s, fallback=False)
                except Unauthenticated as exc:
                    cause = (
                        Cause.TRUST_ANCHOR_REMOVED
                        if exc.cause is Cause.FOREIGN_CA
                        else Cause.NO_LONGER_VALID
                    )
                    self._execute(self.registry.revoke_sessions([s.session_id], cause))
                except Unavailable:
                    unreachable.append(s)
            if answered and not unreachable:
                self.resolver.end_outage()
                return
            attempt += 1
            if attempt >= attempts:
                # Could not reach Redis to vouch for them: fail closed, unless the grace does.
                covered = [
                    s
                    for s in unreachable
                    if self.resolver.fallback_vouches(s.identity.credential_kind, s.lookup)
                ]
                self._execute(
                    self.registry.revoke_sessions(
                        [s.session_id for s in unreachable if s not in covered],
                        Cause.COULD_NOT_REVALIDATE,
                    )
                )
                unreachable = covered
            if not unreachable and not self.resolver.cache.fallbacks:
                return  # nothing left to vouch for, and no grace in use
            pending = unreachable
            log.warning(
                "sessions.revalidate_retry",
                remaining=len(pending),
                attempt=attempt,
                redis=answered,
            )
            await asyncio.sleep(delay if attempt < attempts else max(delay, max_delay))

    async def run_expiry_timer(self) -> None:
        """Disconnects sessions whose API key reached the end of its rotation overlap."""
        while True:
            self._execute(self.registry.due(self._clock()))
            nxt = self.registry.next_expiry()
            timeout = 1.0 if nxt is None else max(0.0, min(1.0, nxt - self._clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def disconnect_all(self, cause: Cause = Cause.SHUTTING_DOWN) -> None:
        """Graceful shutdown: tell every session to go."""
        self._execute(self.registry.revoke_sessions(list(self._closers), cause))

    # -- carrying out orders ----------------------------------------------------------------------
    def _execute(self, orders: list[DisconnectOrder]) -> None:
        for order in orders:
            closer = self._closers.pop(order.session_id, None)
            if self.mirror is not None:
                self.mirror.removed(order.identity.tenant_id, order.session_id)
            log.info(
                "sessions.disconnect",
                session=order.session_id,
                transport=order.transport,
                tenant=order.identity.tenant_id,
                device=order.identity.device_id,
                cause=order.cause.label,
            )
            metrics.disconnect_ordered(order.transport, order.cause)
            for observe in self.observers:
                observe(order)
            if closer is None:
                continue
            try:
                result = closer(order)
            except Exception:
                log.exception("sessions.disconnect_failed", session=order.session_id)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
