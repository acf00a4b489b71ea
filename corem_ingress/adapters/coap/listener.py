"""The CoAP device listener: DTLS transport + CoAP endpoint + device site, wired to Services.

Each established DTLS session becomes a ``DeviceSession`` registered in the
live-session hub (revocation -> close_notify and forget); an Observe on
``/down`` adds a downlink sink for the device.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from aiocoap import Code, Message

from corem_ingress import metrics
from corem_ingress.adapters.coap import codec, provisioning
from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession, DeviceSite, SiteLimits
from corem_ingress.adapters.dtls import cid
from corem_ingress.adapters.dtls.cluster import CidCluster
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.adapters.dtls.transport import DtlsTransport
from corem_ingress.adapters.lwm2m.bootstrap import (
    bootstrap_request,
    certificate_bootstrap_request,
)
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import DeliveryState, Downlink, DropReason
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.uplink import Transport

if TYPE_CHECKING:
    from corem_ingress.adapters.lwm2m.server import Lwm2mServer
    from corem_ingress.services import Services

log = structlog.get_logger("corem.coap")

#: A resource handler mounted beside the device site (e.g. LwM2M's ``/rd``).
MountedHandler = Callable[[DeviceSession, Message], Message | Awaitable[Message]]
#: How long the next large notification waits for the device to fetch the blocks of the
#: previous one (RFC 7959 2.4) before that transfer is given up.
BLOCK2_TRANSFER_WAIT_S = 5.0


class _NotificationOrder:
    """Per session: one notification at a time, and a large one's blocks fetched before the
    next goes out (two large downlinks back to back must not mix their blocks)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.transfer_closed = asyncio.Event()
        self.transfer_closed.set()


class CoapListener:
    name = "coap"

    def __init__(self, services: Services) -> None:
        cfg = services.config.coap
        cfg.validate()
        self.services = services
        self.port = cfg.port
        self._ids = itertools.count(1)
        self.sessions: dict[Address, DeviceSession] = {}
        #: First URI path segment -> handler, consulted before the device site.
        self.mounts: dict[str, MountedHandler] = {}
        #: Called with (session, started: bool) when a DTLS session starts or ends.
        self.session_hooks: list[Callable[[DeviceSession, bool], None]] = []
        #: The LwM2M server mounted on this listener (``lwm2m.enabled``), set by ``build``.
        self.lwm2m: Lwm2mServer | None = None
        self._order: dict[str, _NotificationOrder] = {}
        #: Sessions a claim opened (address -> claim PSK identity): ``POST /provision`` only.
        self.claim_sessions: dict[Address, str] = {}
        credentials = provisioning.ClaimCredentials(services.resolver, services)
        #: Session id -> (device id, owner) of the sessions observing ``/down``.
        self._owners: dict[str, tuple[str, str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.dtls_server = DtlsServer(
            cert_file=cfg.server_cert or None,
            key_file=cfg.server_key or None,
            ca_files=list(cfg.client_ca_files),
            credentials=credentials,
            wall_clock=services.clock,
            config=DtlsConfig(
                mtu=cfg.mtu,
                handshake_timeout=cfg.handshake_timeout_s,
                idle_timeout=cfg.idle_timeout_s,
                max_sessions=cfg.max_sessions,
                handshake_rate=cfg.handshake_rate_per_s,
                handshake_burst=float(cfg.handshake_burst),
                max_pending=cfg.max_pending_handshakes,
                max_pending_per_source=cfg.max_pending_handshakes_per_source,
                cid_enabled=cfg.connection_id.enabled,
                cid_length=cfg.connection_id.length,
                node_tag=cid.node_tag(services.node_id),
                resumption=cfg.resumption.enabled,
                detach_openssl=cfg.detach_openssl,
            ),
        )
        # Timers on the monotonic clock; certificate validity and dates on the node's clock.
        self.transport = DtlsTransport(
            self.dtls_server, credentials, self, wall_clock=services.clock
        )
        if cfg.resumption.enabled:
            self.transport.use_resumption(
                services.stores.dtls_sessions(
                    lifetime_s=cfg.resumption.lifetime_s,
                    rotation_s=cfg.resumption.rotation_s,
                    clock=services.clock,
                )
            )
        self.cluster: CidCluster | None = None
        if cfg.connection_id.enabled and cfg.connection_id.length:
            self.cluster = CidCluster(
                services.stores.cid_nodes(),
                cid.node_tag(services.node_id),
                self.transport.send_datagram,
            )
        self.endpoint = CoapEndpoint(
            self.transport.send,
            self._request,
            ack_timeout=cfg.ack_timeout_s,
            max_retransmit=cfg.max_retransmit,
            on_reset=self._reset,
            max_body=cfg.max_body_bytes,
            plain=self._plain_request,
        )
        self.site = DeviceSite(
            services.uplinks.append,
            limits=SiteLimits(cfg.max_body_bytes, cfg.block_size, cfg.unavailable_max_age_s),
            clock=services.clock,
            on_observe=self._observing,
        )

    # -- Listener ------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.services.config.coap
        reuse_port = self.services.config.reuse_port
        self.port = await self.transport.open(cfg.host, cfg.port, reuse_port=reuse_port)
        log.info("coap.listening", host=cfg.host, port=self.port, reuse_port=reuse_port)
        if self.cluster is not None:
            # Sharing the port, this process takes other nodes' frames on a port of its own.
            node_port = await self.transport.open_node_socket(cfg.host) if reuse_port else 0
            advertise = (cfg.connection_id.advertise_host or cfg.host, node_port or self.port)
            try:
                await self.cluster.start(advertise)
            except Exception as exc:  # Redis down: CID sessions still work on this node
                log.warning("coap.cid_forwarding_unavailable", error=str(exc))
            else:
                self.transport.use_cluster(self.cluster)
        if self.lwm2m is not None:
            await self.lwm2m.start()

    async def stop(self, deadline: float) -> None:
        # Finish what devices already sent (2.04 only after the append), refuse new requests
        # with 5.03 meanwhile, then close_notify every session.
        self.endpoint.draining_max_age = self.services.config.coap.unavailable_max_age_s
        await self.endpoint.drain(max(0.0, deadline / 2))
        for addr in list(self.sessions):
            self.transport.close(addr, Cause.SHUTTING_DOWN)
        if self._background:  # queues of observers start their expiry now
            await asyncio.wait(list(self._background), timeout=max(0.1, deadline / 4))
        if self.lwm2m is not None:  # after the sessions: their registrations are unreachable
            await self.lwm2m.stop()
        if self.cluster is not None and self.cluster.ready:
            try:
                await self.cluster.stop()
            except Exception as exc:  # Redis down: the entry is overwritten by the next run
                log.warning("coap.cid_unregister_failed", error=str(exc))
        # Last before closing: a handshake that completes after the flush is not stored.
        await self.transport.flush_sessions(max(0.1, deadline / 4))
        self.transport.close_transport()

    # -- DtlsHandler ---------------------------------------------------------------------------
    def session_started(self, addr: Address, credential: Credential | None) -> None:
        session_id = f"coap-{self.services.node_id}-{next(self._ids)}"
        if credential is not None and provisioning.is_claim_credential(credential):
            # No device credential on the session: the site and mounts answer 4.01.
            self.sessions[addr] = DeviceSession(addr, session_id, None)
            self.claim_sessions[addr] = credential.lookup
            log.info("coap.claim_session_started", session=session_id)
            return
        session = DeviceSession(addr, session_id, credential)
        self.sessions[addr] = session
        if credential is not None:
            self.services.sessions.register(
                LiveSession(
                    session_id,
                    Transport.COAP.value,
                    credential.identity,
                    credential.lookup,
                    chain=credential.chain,
                    peer=f"{addr[0]}:{addr[1]}",
                ),
                functools.partial(self._disconnect, addr, session_id),
            )
        for hook in self.session_hooks:
            hook(session, True)
        log.info(
            "coap.session_started",
            session=session_id,
            device=credential.identity.device_id if credential else None,
        )

    def data_received(self, addr: Address, data: bytes) -> None:
        self.endpoint.datagram_received(addr, data)

    def session_closed(self, addr: Address, cause: Cause, established: bool, detail: str) -> None:
        if not established:
            # A handshake that never completed has no session; a session may still live at
            # this address (a new connection from it that failed: RFC 6347 4.2.8).
            log.info("coap.handshake_refused", peer=addr[0], cause=cause.label, detail=detail)
            return
        session = self.sessions.pop(addr, None)
        self.endpoint.forget(addr)
        if session is None or self.claim_sessions.pop(addr, None) is not None:
            return
        self.services.sessions.unregister(session.session_id)
        self._order.pop(session.session_id, None)
        for hook in self.session_hooks:
            hook(session, False)
        if session.credential is not None:
            self.services.downlinks.remove(
                session.credential.identity.device_id, session.session_id
            )
        owned = self._owners.pop(session.session_id, None)
        if owned is not None:
            self._spawn(self._close_record(*owned))
        log.info("coap.session_closed", session=session.session_id, cause=cause.label)

    # -- internals -----------------------------------------------------------------------------
    def _disconnect(self, addr: Address, session_id: str, order: DisconnectOrder) -> None:
        session = self.sessions.get(addr)
        if session is not None and session.session_id == session_id:
            self.transport.close(addr, order.cause)

    def _request(self, addr: Address, msg: Message) -> Message | Awaitable[Message]:
        session = self.sessions.get(addr)
        if session is None:
            session = DeviceSession(addr, "", None)  # -> 4.01
        # aiocoap builds the Uri-Path tuple on each access: read it once.
        path = tuple(msg.opt.uri_path)
        claim = self.claim_sessions.get(addr)
        if claim is not None:
            if path == ("bs",):
                return bootstrap_request(self, addr, claim, msg)  # LwM2M bootstrap
            return provisioning.provision(self.services, claim, msg)
        if path == ("bs",) and session.credential is not None:
            return certificate_bootstrap_request(self, session, msg)  # by the tenant CA
        mounted = self.mounts.get(path[0]) if path else None
        if mounted is not None and session.credential is not None:
            return mounted(session, msg)
        if (
            path == ("down",)
            and msg.code == Code.GET
            and msg.opt.observe is None
            and msg.opt.block2 is None
            and session.credential is not None
        ):
            return self._poll_down(session, msg)
        reply = self.site.handle(session, msg)
        order = self._order.get(session.session_id)
        if order is not None and not session.representations.transfer_open:
            order.transfer_closed.set()
        return reply

    def _plain_request(
        self, addr: Address, req: codec.PlainRequest
    ) -> int | Message | Awaitable[int | Message] | None:
        """``_request`` for a plain request to the device site (``DeviceSite.plain``); None
        for one of a claim or unknown session, to ``/bs`` or a mounted path (LwM2M), or one
        the site leaves to ``_request`` (the poll, an Observe registration)."""
        session = self.sessions.get(addr)
        path = req.path
        if session is None or session.credential is None or not path:
            return None
        if path[0] in self.mounts or path == ("bs",):
            return None
        reply = self.site.plain(session, req)
        if reply is not None:
            order = self._order.get(session.session_id)
            if order is not None and not session.representations.transfer_open:
                order.transfer_closed.set()
        return reply

    def adopt_claim_session(self, addr: Address, credential: Credential) -> bool:
        """A claim session whose device was just bootstrapped becomes that device's session
        (LwM2M clients register over the session they bootstrapped on when both servers
        share an address). False if the session is gone."""
        if self.claim_sessions.pop(addr, None) is None:
            return False
        self.sessions.pop(addr, None)
        self.session_started(addr, credential)
        return True

    # -- for other CoAP adapters on this port (LwM2M) -------------------------------------------
    def mount(self, first_segment: str, handler: MountedHandler) -> None:
        """Route requests whose path starts with ``first_segment`` to ``handler``."""
        if first_segment in ("up", "down"):
            raise ValueError(f"/{first_segment} belongs to the device site")
        self.mounts[first_segment] = handler

    async def request(
        self,
        addr: Address,
        msg: Message,
        *,
        response_timeout: float = 30.0,
        token: bytes | None = None,
        on_notification: Callable[[Message], None] | None = None,
    ) -> Message:
        """A server-initiated CoAP request to the peer over its DTLS session (an Observe
        registration with ``on_notification``; see ``CoapEndpoint.request``)."""
        return await self.endpoint.request(
            addr,
            msg,
            response_timeout=response_timeout,
            token=token,
            on_notification=on_notification,
        )

    def peer_certificate(self, addr: Address) -> bytes | None:
        """The certificate (DER) this peer's DTLS session authenticated with, if any."""
        return self.dtls_server.peer_certificate(addr)

    def close_session(self, addr: Address, cause: Cause = Cause.CLOSED_BY_SERVER) -> bool:
        """close_notify and forget this peer's DTLS session."""
        return self.transport.close(addr, cause)

    def keep_session(self, addr: Address, until: float) -> bool:
        """Keep this peer's DTLS session open until ``until`` (clock time), however idle
        (a registered LwM2M device's session lives as long as its registration)."""
        return self.transport.keep_alive(addr, until)

    @staticmethod
    async def _transfer_done(session: DeviceSession, order: _NotificationOrder) -> None:
        """Wait (bounded) until the device fetched the blocks of the previous notification."""
        if not session.representations.transfer_open:
            return
        try:
            await asyncio.wait_for(order.transfer_closed.wait(), BLOCK2_TRANSFER_WAIT_S)
        except TimeoutError:
            session.representations.abandon()

    def _reset(self, addr: Address, token: bytes) -> None:
        session = self.sessions.get(addr)
        if session is not None:
            session.observations.pop(token, None)

    def _observing(self, session: DeviceSession) -> None:
        if session.credential is None:
            return
        device_id = session.credential.identity.device_id
        addr, sid = session.addr, session.session_id
        owner = f"{self.services.node_id}|{sid}"
        order = self._order.setdefault(sid, _NotificationOrder())
        results: dict[str, str] = {}

        async def notify_all(current: DeviceSession, downlink: Downlink) -> bool:
            """One notification per observation of ``/down`` (CON: True once ACKed)."""
            await self._transfer_done(current, order)
            sent = await asyncio.gather(
                *(
                    self.endpoint.notify(
                        addr,
                        self.site.notification(current, obs, downlink),
                        confirmable=downlink.qos >= 1,
                    )
                    for obs in list(current.observations.values())
                )
            )
            if current.representations.transfer_open:
                order.transfer_closed.clear()
            return any(sent)

        def live() -> DeviceSession | None:
            current = self.sessions.get(addr)
            if current is None or current.session_id != sid or current.credential is None:
                return None
            return current

        async def drain_queue() -> None:
            """Queued downlinks, oldest first, one CON notification at a time: each leaves
            the queue on its ACK; an unanswered one stays (the device sleeps again)."""
            store = self.services.device_sessions
            while (current := live()) is not None and current.observations:
                fetched = await store.fetch(
                    device_id, owner, now=self.services.clock(), count=1, in_flight=[]
                )
                if fetched is None or not fetched.entries:
                    return
                entry, downlink, _dup = fetched.entries[0]
                if not await notify_all(current, downlink):
                    results[downlink.message_id] = DropReason.NOT_DELIVERED.value
                    return
                await store.done(device_id, entry, downlink.message_id)
                results[downlink.message_id] = DeliveryState.DELIVERED.value
                if len(results) > 256:
                    del results[next(iter(results))]

        async def sink(downlink: Downlink, queued: bool) -> str:
            async with order.lock:
                current = live()
                if current is None:
                    return DropReason.NOT_DELIVERED.value
                ident = current.credential.identity if current.credential else None
                if ident is None or (downlink.tenant_id, downlink.device_id) != (
                    ident.tenant_id,
                    ident.device_id,
                ):
                    return DropReason.NOT_DELIVERED.value
                if queued:  # in this device's queue: sent from there, oldest first
                    try:
                        await drain_queue()
                    except Unavailable:
                        return DropReason.NOT_DELIVERED.value
                    return results.get(downlink.message_id, DropReason.NOT_DELIVERED.value)
                delivered = await notify_all(current, downlink)
                return (
                    DeliveryState.DELIVERED.value if delivered else DropReason.NOT_DELIVERED.value
                )

        async def open_and_drain() -> None:
            try:
                await self._open_record(device_id, owner)
                async with order.lock:
                    await drain_queue()
            except Unavailable as exc:
                log.warning("coap.queue_unavailable", device=device_id, reason=exc.reason)

        self.services.downlinks.add(device_id, sid, sink)
        self._owners[sid] = (device_id, owner)
        self._spawn(open_and_drain())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _open_record(self, device_id: str, owner: str) -> None:
        """The device's downlink session record: CoAP devices always keep their queue (for
        ``downlinks.coap_session_expiry_s`` once gone)."""
        await self.services.device_sessions.open(
            device_id,
            owner,
            clean=False,
            persistent=True,
            expiry_s=self.services.config.downlinks.coap_session_expiry_s,
            transport=Transport.COAP.value,
        )

    async def _close_record(self, device_id: str, owner: str) -> None:
        """The DTLS session ended: its queue is kept for ``downlinks.coap_session_expiry_s``."""
        try:
            await self.services.device_sessions.close(device_id, owner)
        except Unavailable as exc:
            log.warning("coap.session_not_closed", device=device_id, reason=exc.reason)

    async def _poll_down(self, session: DeviceSession, msg: Message) -> Message:
        """``GET /down`` without Observe: the oldest queued downlink, which leaves the queue
        as this 2.05 is sent; 2.05 with no payload when nothing is queued. The device's
        queue is kept from now on (downlinks sent while it sleeps wait for its next poll)."""
        assert session.credential is not None
        store = self.services.device_sessions
        device_id = session.credential.identity.device_id
        now = self.services.clock()
        try:
            if session.session_id not in self._owners:
                # The record opened and closed (offline between polls: queue, no wake) and
                # the pop, in one round trip.
                downlink, expired = await store.poll(
                    device_id,
                    f"{self.services.node_id}|{session.session_id}|poll",
                    expiry_s=self.services.config.downlinks.coap_session_expiry_s,
                    transport=Transport.COAP.value,
                    now=now,
                )
            else:
                downlink, expired = await store.pop_oldest(device_id, now=now)
        except Unavailable:
            resp = Message(code=Code.SERVICE_UNAVAILABLE)
            resp.opt.max_age = self.services.config.coap.unavailable_max_age_s
            return resp
        if expired:
            metrics.downlink_dropped(DropReason.EXPIRED.value, expired)
        if downlink is None:
            return Message(code=Code.CONTENT)
        return self.site.downlink_response(session, downlink)
