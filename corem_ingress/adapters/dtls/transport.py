"""The asyncio side of the DTLS server: it only moves bytes, runs timers and resolves.

``datagram_received`` feeds the sans-I/O ``DtlsServer`` with that datagram and with every
other one already queued on the socket (up to ``DRAIN_MAX``, read on a duplicate of the
socket: one loop wake-up, one pump, as recvmmsg would; after a wake-up that found nothing
more queued, the next ``DRAIN_BACKOFF`` ones skip that try); after the input the produced
datagrams are sent and the events are handed to a ``DtlsHandler`` (the CoAP layer).
What the handlers send while events are being handed out goes out with the pump's final
flush (no nested pump). ``CredentialNeeded`` events become resolver calls (async, they
fill the resolver's cache) after which the held handshake continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.dtls.cluster import MAGIC, TO_OWNER, CidCluster
from corem_ingress.adapters.dtls.events import (
    Address,
    ApplicationData,
    Credential,
    CredentialNeeded,
    HandshakeCompleted,
    SessionClosed,
    SessionIssued,
    SessionLookup,
)
from corem_ingress.adapters.dtls.server import DtlsServer
from corem_ingress.core.causes import Cause
from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.core.errors import IngressError
from corem_ingress.core.identity import CredentialKind

log = structlog.get_logger("corem.dtls")

#: Datagrams handled per readable event before the pump (the first one included).
DRAIN_MAX = 32
#: Wake-ups that skip the drain after one that found nothing queued.
DRAIN_BACKOFF = 3
_RECV_SIZE = 65_536


class DtlsHandler(Protocol):
    """What sits on top of the DTLS transport (CoAP, LwM2M)."""

    def session_started(self, addr: Address, credential: Credential | None) -> None: ...

    def data_received(self, addr: Address, data: bytes) -> None: ...

    def session_closed(
        self, addr: Address, cause: Cause, established: bool, detail: str
    ) -> None: ...


class DtlsGuard(Protocol):
    """Limits and metrics around the sessions (``adapters/coap/guard.py``)."""

    def source_blocked(self, ip: str) -> bool: ...

    def handshake_started(self, addr: Address) -> None: ...

    def max_sessions_reached(self, addr: Address) -> None: ...

    def handshake_rate_limited(self, addr: Address) -> None: ...

    def pending_handshakes_refused(self, addr: Address) -> None: ...

    def admit(self, addr: Address, credential: Credential | None) -> bool: ...

    def closed(self, addr: Address, cause: Cause, established: bool, detail: str) -> None: ...


class AsyncResolver(Protocol):
    async def resolve_psk(self, identity: str) -> Any: ...

    async def resolve_cert(
        self, fingerprint: str, *, chain: None, der: bytes | None = None
    ) -> Any: ...


class SessionStore(Protocol):
    """Sessions kept for resumption (``store/dtls_sessions.DtlsSessionStore``)."""

    def queue(self, session_id: bytes, session: StoredSession) -> None: ...

    async def run_writer(self) -> None: ...

    async def flush(self) -> None: ...

    async def load(self, session_id: bytes) -> StoredSession | None: ...

    async def delete(self, session_id: bytes) -> None: ...


class DtlsTransport(asyncio.DatagramProtocol):
    def __init__(
        self,
        server: DtlsServer,
        resolver: AsyncResolver,
        handler: DtlsHandler,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.guard: DtlsGuard | None = None
        self._resolver = resolver
        self.handler = handler
        #: The server's ``now``: monotonic (timers must not jump with the wall clock).
        self._clock = clock
        #: Dates (a ``keep_alive`` deadline such as a registration's expiry).
        self._wall_clock = wall_clock
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: ``server.timer_changes`` when the timer was last planned.
        self._timer_changes = -1
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        server.on_address_changed = self._address_changed
        #: Cross-node CID forwarding (``use_cluster``); None: a foreign CID is dropped.
        self.cluster: CidCluster | None = None
        #: A duplicate of the listening socket, non-blocking: what else is queued is read
        #: from it in the same wake-up (None: one datagram per wake-up).
        self._drain: socket.socket | None = None
        self._drain_skip = 0
        #: This process's own socket for other nodes' frames (``open_node_socket``).
        self._node_transport: asyncio.DatagramTransport | None = None
        #: True while events are handed to the handlers: their sends wait for the final flush.
        self._pumping = False
        #: Sessions kept for resumption (``use_resumption``).
        self.sessions: SessionStore | None = None
        server.on_resumption = metrics.dtls_resumption

    async def open(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, port), reuse_port=reuse_port or None
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._drain = socket.socket(fileno=os.dup(sock.fileno()))
            self._drain.setblocking(False)
        if self.sessions is not None:
            self._spawn(self.sessions.run_writer())
        return self.port

    async def open_node_socket(self, host: str) -> int:
        """A UDP socket of this process alone (an OS-chosen port) for the frames of other
        nodes: with ``reuse_port`` a frame sent to the shared port would reach whichever
        process the kernel picks, so the nodes exchange them here. -> its port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _NodeSocket(self), local_addr=(host, 0)
        )
        self._node_transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def close_transport(self) -> None:
        if self._node_transport is not None:
            self._node_transport.close()
            self._node_transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._drain is not None:
            self._drain.close()
            self._drain = None

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._receive(data, addr)
        drain = self._drain
        if drain is not None and self._drain_skip > 0:
            self._drain_skip -= 1
        elif drain is not None:
            drained = 0
            for _ in range(DRAIN_MAX - 1):
                try:
                    data, addr = drain.recvfrom(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. an ICMP error queued on the socket
                    self.error_received(exc)
                    break
                self._receive(data, addr)
                drained += 1
            # Nothing was queued: one datagram per wake-up (light traffic) does not pay the
            # extra recvfrom on each of the next few wake-ups.
            self._drain_skip = 0 if drained else DRAIN_BACKOFF
        self._pump()

    def _receive(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        try:
            if data[:2] == MAGIC and self.cluster is not None:
                self._node_frame(data, source)
            else:
                self.server.receive_datagram(data, source, self._clock())
        except Exception:  # never let one datagram stop the listener
            log.exception("dtls.receive_failed")

    def node_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A datagram on the node socket: only other nodes' frames are taken there."""
        if data[:2] == MAGIC and self.cluster is not None:
            try:
                self._node_frame(data, (str(addr[0]), int(addr[1])))
            except Exception:
                log.exception("dtls.receive_failed")
            self._pump()

    def _node_frame(self, data: bytes, node: Address) -> None:
        """A frame from another node: a device's record for us, or our answer to send on."""
        assert self.cluster is not None
        frame = self.cluster.open(data)
        if frame is None:
            return
        if frame.kind == TO_OWNER:
            self.server.receive_datagram(frame.datagram, frame.device, self._clock(), via=node)
        elif self._transport is not None:
            self._transport.sendto(frame.datagram, frame.device)

    def error_received(self, exc: Exception) -> None:
        log.debug("dtls.socket_error", error=str(exc))

    # -- user API ------------------------------------------------------------------------------
    def set_guard(self, guard: DtlsGuard) -> None:
        """Limits and metrics: consulted on ClientHellos and told of sessions starting/ending."""
        self.guard = guard
        self.server.source_blocked = guard.source_blocked
        self.server.on_handshake_started = guard.handshake_started
        self.server.on_max_sessions = guard.max_sessions_reached
        self.server.on_rate_limited = guard.handshake_rate_limited
        self.server.on_pending_refused = guard.pending_handshakes_refused

    def send_datagram(self, datagram: bytes, addr: Address) -> None:
        """A frame to another node, from the node socket when there is one (its answers
        must come back to this process), else from the listener's socket."""
        transport = self._node_transport or self._transport
        if transport is not None:
            transport.sendto(datagram, addr)

    def use_cluster(self, cluster: CidCluster) -> None:
        """Forward CID records of other nodes' sessions to them; take theirs for ours."""
        self.cluster = cluster
        self.server.forward_cid = cluster.forward
        self.server.wrap_back = cluster.back

    def use_resumption(self, store: SessionStore) -> None:
        """Store the sessions full handshakes issue; resume them from there (any node)."""
        self.sessions = store
        if self._transport is not None:  # already open: its writer starts now
            self._spawn(store.run_writer())

    async def flush_sessions(self, timeout_s: float) -> None:
        """Store the sessions still queued (a clean stop), within ``timeout_s``."""
        if self.sessions is not None:
            try:
                await asyncio.wait_for(self.sessions.flush(), timeout_s)
            except Exception as exc:  # a timeout: Redis too slow, these are not stored
                log.warning("dtls.session_store_failed", error=str(exc) or type(exc).__name__)

    def send(self, addr: Address, data: bytes) -> bool:
        ok = self.server.send(addr, data)
        if not self._pumping:  # else the pump in progress sends it
            self._pump()
        return ok

    def close(self, addr: Address, cause: Cause = Cause.CLOSED_BY_SERVER) -> bool:
        ok = self.server.close(addr, cause)
        if not self._pumping:  # else the pump in progress sends it and hands out its event
            self._pump()
        return ok

    def keep_alive(self, addr: Address, until: float) -> bool:
        """The session stays open until ``until`` (a wall-clock date, e.g. a registration's
        expiry) however idle; 0: idle rules."""
        if until > 0:
            until = self._clock() + (until - self._wall_clock())  # onto the server's clock
        return self.server.keep_alive(addr, until)

    # -- internals -----------------------------------------------------------------------------
    def _address_changed(self, session: Address, old: Address, new: Address) -> None:
        metrics.cid_address_changed()
        log.info("dtls.cid_address_changed", session=session, old=old, new=new)

    def _sendto(self, datagram: bytes, addr: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, addr)

    def _pump(self) -> None:
        for datagram, addr in self.server.datagrams_to_send():
            self._sendto(datagram, addr)
        if self._pumping:  # a handler's own call: the pump in progress hands out the events
            return
        handled = False
        #: Sessions a limit refused in this pump: data that came with their handshake (in
        #: the same drained batch) is not handed on.
        refused: set[Address] = set()
        self._pumping = True
        try:
            while (event := self.server.next_event()) is not None:
                handled = True
                self._dispatch(event, refused)
        finally:
            self._pumping = False
        if handled:  # handlers may have sent data
            for datagram, addr in self.server.datagrams_to_send():
                self._sendto(datagram, addr)
        self._schedule()

    def _dispatch(self, event: object, refused: set[Address]) -> None:
        try:
            if isinstance(event, ApplicationData):
                if event.addr not in refused:
                    self.handler.data_received(event.addr, event.data)
            elif isinstance(event, HandshakeCompleted):
                guard = self.guard
                if guard is not None and not guard.admit(event.addr, event.credential):
                    # Refused by a limit: close_notify now; its SessionClosed follows.
                    refused.add(event.addr)
                    self.server.close(event.addr, Cause.TENANT_CONNECTIONS)
                    return
                refused.discard(event.addr)
                self.handler.session_started(event.addr, event.credential)
            elif isinstance(event, SessionClosed):
                if self.guard is not None:
                    self.guard.closed(event.addr, event.cause, event.established, event.detail)
                self.handler.session_closed(
                    event.addr, event.cause, event.established, event.detail
                )
            elif isinstance(event, CredentialNeeded):
                self._spawn(self._lookup(event))
            elif isinstance(event, SessionLookup):
                self._spawn(self._resume(event))
            elif isinstance(event, SessionIssued) and self.sessions is not None:
                self.sessions.queue(event.session_id, event.session)  # batched: no Redis here
        except Exception:
            # structlog's first argument is the event name: the DTLS event is "dtls_event".
            log.exception("dtls.handler_failed", dtls_event=type(event).__name__)

    def _schedule(self) -> None:
        changes = self.server.timer_changes
        if self._timer is not None and changes == self._timer_changes:
            return  # no deadline moved since the armed timer was planned (most datagrams)
        self._timer_changes = changes
        now = self._clock()
        at = self.server.next_timer(now)
        if at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - now) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.server.handle_timer(self._clock())
        self._pump()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, event: CredentialNeeded) -> None:
        with contextlib.suppress(IngressError):
            if event.kind is CredentialKind.PSK:
                await self._resolver.resolve_psk(event.lookup)
            else:
                # Fills the cache (registration and tenant trust); the handshake's verify
                # callback then checks the chain the device presented.
                await self._resolver.resolve_cert(event.lookup, chain=None, der=event.der)
        self.server.credential_resolved(event.addr, self._clock())
        self._pump()

    async def _resume(self, event: SessionLookup) -> None:
        """The stored session (None: not found, or Redis down -> a full handshake, whose
        credential checks fail closed on their own), its credential resolved into the cache
        for the server's re-check; a refused one is deleted."""
        stored = None
        if self.sessions is not None:
            try:
                stored = await self.sessions.load(event.session_id)
            except Exception as exc:
                log.warning("dtls.session_lookup_failed", error=str(exc))
        if stored is not None:
            with contextlib.suppress(IngressError):
                if stored.kind == CredentialKind.PSK.value:
                    await self._resolver.resolve_psk(stored.lookup)
                else:
                    await self._resolver.resolve_cert(stored.lookup, chain=None)
        refused = self.server.session_found(event.addr, event.session_id, stored, self._clock())
        self._pump()
        if refused is not None and self.sessions is not None:
            try:
                await self.sessions.delete(event.session_id)
            except Exception as exc:
                log.warning("dtls.session_delete_failed", error=str(exc))


class _NodeSocket(asyncio.DatagramProtocol):
    """The node socket's protocol: hands its datagrams to the transport."""

    def __init__(self, owner: DtlsTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner.node_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dtls.node_socket_error", error=str(exc))
