"""The asyncio layer of one MQTT-over-TLS connection: it moves bytes and events.

socket -> TlsSession (memory BIOs) -> MqttConnection (sans-I/O core) -> events: a CONNECT
goes to ``admission.admit``; once admitted, PUBLISH/SUBSCRIBE/UNSUBSCRIBE go to the
device's ``session.DeviceSession`` (the Redis append before PUBACK, topic policy,
downlinks, revocation, the will).
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from typing import TYPE_CHECKING, Literal

import structlog

from corem_ingress import metrics
from corem_ingress.access_gate import AccessGate
from corem_ingress.adapters.mqtt import provisioning
from corem_ingress.adapters.mqtt.admission import Admitted, admit
from corem_ingress.adapters.mqtt.codec import Connect, Publish
from corem_ingress.adapters.mqtt.connection import MqttConnection, State
from corem_ingress.adapters.mqtt.downlink import Subscriptions, session_terms
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    PublishAcknowledged,
    PublishReceived,
    PublishRefused,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.adapters.mqtt.properties import Prop
from corem_ingress.adapters.mqtt.session import DeviceSession
from corem_ingress.adapters.mqtt.tls import TlsError, TlsSession
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.proxy_protocol import ProxyHeaderError, ProxyMode, ProxyPreamble
from corem_ingress.core.sessions import DisconnectOrder
from corem_ingress.store.device_sessions import OpenedSession, owner_node

if TYPE_CHECKING:
    from corem_ingress.adapters.mqtt.listener import MqttListener

log = structlog.get_logger("corem.mqtt")

#: One socket read buffer shared by every connection: each read is consumed at once.
_READ = bytearray(64 * 1024)
_READ_VIEW = memoryview(_READ)
TRANSPORT = "mqtt"


class MqttProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "_closed",
        "_gate",
        "_ip",
        "_preamble",
        "_task",
        "_timer",
        "_transport",
        "listener",
        "mqtt",
        "peer",
        "received_at",
        "session",
        "tls",
    )

    def __init__(self, listener: MqttListener) -> None:
        self.listener = listener
        self._gate: AccessGate = listener.gate
        self._transport: asyncio.Transport | None = None
        self.tls = TlsSession(listener.tls_context)
        self.mqtt = MqttConnection(listener.connection_config, listener.loop.time())
        self._timer: asyncio.TimerHandle | None = None
        #: The admitted device (or claim: adapters/mqtt/provisioning.py), once CONNACK 0 went out.
        self.session: DeviceSession | provisioning.ClaimSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.peer = ""
        self._ip = ""
        #: Reads the PROXY header first when ``mqtt.proxy_protocol`` is on (None: done/off).
        self._preamble: ProxyPreamble | None = None
        #: Wall-clock time (``services.clock``) of the latest read: the ``received_at`` of
        #: every PUBLISH it carried (one clock call per read, not per message).
        self.received_at = listener.services.clock()

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport is not a subclass.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._ip = str(peer[0]) if peer else "?"
        listener = self.listener
        listener.connection_opened(self)
        metrics.connection_opened(TRANSPORT)
        self._schedule_timer()  # the connect timeout also bounds a stalled PROXY header
        if listener.proxy_mode is not ProxyMode.OFF and peer:
            self._preamble = ProxyPreamble(
                self._ip,
                int(peer[1]),
                trusted=self._ip in listener.services.access.trusted_proxies,
                required=listener.proxy_mode is ProxyMode.REQUIRED,
            )
            return  # the client's address is known once the header is read
        self._admit_source()

    def _admit_source(self) -> None:
        if self._gate.check_source(self._ip) is not None:
            # Throttled source: closed before any TLS work (the handshake is the costly part).
            self.listener.count("throttled")
            self._close(Cause.AUTH_THROTTLE, error=True)

    def _read_preamble(self, preamble: ProxyPreamble, data: bytes) -> bytes | None:
        """Bytes after the PROXY header once decided (the client's address is then known)."""
        try:
            decided = preamble.feed(data)
        except ProxyHeaderError as exc:
            self.listener.count("proxy_refused")
            metrics.proxy_refused(TRANSPORT)
            log.info("mqtt.proxy_refused", peer=self.peer, reason=str(exc))
            self._close(Cause.PROXY_REFUSED, error=True)
            return None
        if decided is None:
            return None
        self._preamble = None
        if decided.proxied:
            self._ip = decided.client
            self.peer = f"{decided.client}:{decided.port}"
        self._admit_source()
        return None if self._closed else decided.rest

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        data = bytes(_READ_VIEW[:nbytes])
        if self._preamble is not None:
            rest = self._read_preamble(self._preamble, data)
            if not rest:
                return
            data = rest
        handshaking = not self.tls.handshake_done
        try:
            plain = self.tls.receive(data)
        except TlsError as exc:
            self.listener.count("tls_failures")
            log.info("mqtt.tls_failed", peer=self.peer, error=str(exc))
            if handshaking:
                # A failed TLS handshake (e.g. a client certificate we do not accept) counts
                # as a failed authentication of the source address.
                metrics.handshake(TRANSPORT, ok=False)
                self._gate.auth_failed(self._ip, Cause.HANDSHAKE_FAILED)
            self._close(Cause.HANDSHAKE_FAILED, error=True)
            return
        if handshaking and self.tls.handshake_done:
            metrics.handshake(TRANSPORT, ok=True)
        if plain:
            self.received_at = self.listener.services.clock()
            self.mqtt.receive_data(plain, self.listener.loop.time())
            self._drain()
        if self.tls.closed:
            self._close(Cause.PEER_CLOSED, error=False)
            return
        self._flush()

    def eof_received(self) -> bool | None:
        self._close(Cause.PEER_CLOSED, error=False)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(Cause.PEER_CLOSED, error=False)

    # -- events ------------------------------------------------------------------------------
    def _drain(self) -> None:
        while (event := self.mqtt.next_event()) is not None:
            session = self.session
            if isinstance(event, PublishReceived):
                assert session is not None  # the core reports these only once CONNECTED
                session.on_publish(event.publish)
            elif isinstance(event, PublishAcknowledged):
                if session is not None:
                    session.on_puback(event.packet_id)
            elif isinstance(event, ConnectReceived):
                self._task = self.listener.loop.create_task(self._admit(event.connect))
            elif isinstance(event, SubscribeReceived):
                assert session is not None
                session.on_subscribe(event.subscribe)
            elif isinstance(event, UnsubscribeReceived):
                assert session is not None
                session.on_unsubscribe(event.unsubscribe)
            elif isinstance(event, PublishRefused):
                self.listener.count("publish_refused")
                log.info("mqtt.publish_refused", peer=self.peer, reason=f"0x{event.reason:02x}")
            elif isinstance(event, ConnectionClosed):
                if event.error:
                    self.listener.count("protocol_closes")
                    if event.cause in (Cause.MAX_SIZE, Cause.RECEIVE_MAXIMUM):
                        self._gate.refused(event.cause)
                    log.info(
                        "mqtt.closed", peer=self.peer, cause=event.cause.label, detail=event.detail
                    )
                self._close(event.cause, error=event.error)
        self._flush()

    async def _admit(self, connect: Connect) -> None:
        if provisioning.presents_claim(connect, self.tls.peer_fingerprint()):
            await self._admit_claim(connect)  # a claim key: provisioning requests only
            return
        try:
            outcome = await admit(
                self.listener,
                self._gate,
                connect,
                self,
                ip=self._ip,
                peer=self.peer,
                fingerprint=self.tls.peer_fingerprint(),
                chain=self.tls.peer_chain(),
                disconnect=self._disconnect,
                is_closed=lambda: self._closed,
            )
        except Exception:  # a bug must not leave the socket hanging in AUTHENTICATING
            log.exception("mqtt.authenticate_failed", peer=self.peer)
            if not self._closed:
                self.mqtt.refuse(Cause.CLOSED_BY_SERVER, "internal error")
                self._drain()
                self.close(Cause.CLOSED_BY_SERVER)
            return
        finally:
            self._task = None  # an idle connection keeps no finished task
        if self._closed:
            if isinstance(outcome, Admitted):
                self.listener.services.sessions.unregister(outcome.session_id)
                self._gate.close_session(outcome.slot)
            return
        if not isinstance(outcome, Admitted):
            self.mqtt.refuse(outcome.cause, outcome.detail)
            self._drain()
            return
        terms = session_terms(
            self.mqtt.version,
            connect.clean_session,
            self.mqtt.requested_session_expiry,
            self.listener.config.session_expiry_max_s,
        )
        owner = f"{self.listener.services.node_id}|{outcome.session_id}"
        opened = await self._open_record(outcome, owner, connect.clean_session, terms)
        if self._closed or opened is False:
            self.listener.services.sessions.unregister(outcome.session_id)
            self._gate.close_session(outcome.slot)
            if opened:  # a record this connection will never use
                self.listener.spawn(self._release_record(outcome, owner))
            if opened is False and not self._closed:
                self.mqtt.refuse(Cause.UNAVAILABLE, "session storage unavailable")
                self._drain()
            return
        self._start(connect, outcome, opened, owner, terms)

    async def _admit_claim(self, connect: Connect) -> None:
        try:
            outcome = await provisioning.admit_claim(self, self._gate, connect, self._ip)
        finally:
            self._task = None
        if self._closed:
            if isinstance(outcome, provisioning.ClaimSession):
                outcome.ended(Cause.PEER_CLOSED, graceful=False)
        elif isinstance(outcome, provisioning.ClaimSession):
            self.session = outcome
            assigned = None if connect.client_id else outcome.session_id
            self.mqtt.accept(
                self.listener.loop.time(), connect.keepalive, assigned_client_id=assigned
            )
            self._schedule_timer()
        else:
            self.mqtt.refuse(outcome)
        self._drain()

    async def _open_record(
        self, admitted: Admitted, owner: str, clean: bool, terms: tuple[bool, int]
    ) -> OpenedSession | Literal[False] | None:
        """The device's session record (present flag, stored subscriptions); a session
        resumed from another node ends there. None: Redis failed, the session goes on
        without one (not persistent); False: a persistent session cannot start."""
        services = self.listener.services
        device_id = admitted.auth.identity.device_id
        persistent, expiry = terms
        try:
            opened = await services.device_sessions.open(
                device_id,
                owner,
                clean=clean,
                persistent=persistent,
                expiry_s=expiry,
                transport=TRANSPORT,
            )
        except Unavailable as exc:
            log.warning("mqtt.session_unavailable", device=device_id, reason=exc.reason)
            return False if persistent or not clean else None
        prev = opened.previous_owner
        if prev and owner_node(prev) != services.node_id:
            await services.downlink_publisher.takeover(device_id, prev)
        return opened

    async def _release_record(self, admitted: Admitted, owner: str) -> None:
        with contextlib.suppress(Unavailable):
            await self.listener.services.device_sessions.close(
                admitted.auth.identity.device_id, owner
            )

    def _start(
        self,
        connect: Connect,
        admitted: Admitted,
        opened: OpenedSession | None,
        owner: str,
        terms: tuple[bool, int],
    ) -> None:
        listener = self.listener
        identity = admitted.auth.identity
        will = None
        if listener.config.wills_as_uplinks and connect.will_topic is not None:
            will = Publish(
                connect.will_topic,
                connect.will_payload or b"",
                1,
                properties=connect.will_properties,
            )
        persistent, expiry = terms
        present = opened is not None and opened.present
        subs = None
        if present and opened is not None and opened.subscriptions:
            subs = Subscriptions.from_json(opened.subscriptions, listener.config.max_subscriptions)
        session = self.session = DeviceSession(
            self,
            admitted,
            will,
            owner=owner if opened is not None else "",
            persistent=persistent and opened is not None,
            subscriptions=subs,
            session_expiry=expiry,
            will_delay=connect.will_properties.int(Prop.WILL_DELAY_INTERVAL, 0) or 0,
        )
        listener.claim(identity.device_id, self)
        listener.services.downlinks.add(identity.device_id, session.session_id, session.deliver)
        self.mqtt.accept(
            listener.loop.time(),
            connect.keepalive,
            assigned_client_id=identity.device_id if not connect.client_id else None,
            session_present=present,
            session_expiry=expiry,
        )
        if present:
            session.kick()  # what was queued (and unacknowledged) while it was away
        listener.count("connect_accepted")
        metrics.session_opened(TRANSPORT, identity.tenant_id)
        log.info(
            "mqtt.connected",
            peer=self.peer,
            tenant=identity.tenant_id,
            device=identity.device_id,
            credential=identity.credential_kind.value,
            session=session.session_id,
        )
        self._schedule_timer()
        self._drain()

    def _disconnect(self, order: DisconnectOrder) -> None:
        """SessionHub callback (registered at admission, before the session starts)."""
        if self.session is not None:
            self.session.disconnect(order)
        else:
            self.close(order.cause)

    # -- what the session uses ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def device_id(self) -> str | None:
        return self.session.identity.device_id if self.session else None

    def fail(self, cause: Cause) -> None:
        """Close for the peer's fault (policy, limits, storage): its will is published."""
        self._close(cause, error=True)

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    # -- closing -----------------------------------------------------------------------------
    def close(self, cause: Cause) -> None:
        """Local close (revocation, take-over, shutdown): close_notify, then the socket."""
        if not self._closed:
            if self.session is not None:
                self.session.will = None  # closed by the broker: no will
            self._close(cause, error=False)

    def _close(self, cause: Cause, *, error: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self.mqtt.state is not State.CLOSED:
            self.mqtt.close(cause)
        self._flush()  # MQTT 5: the DISCONNECT, before close_notify
        if self.tls.handshake_done:
            # Every close of an established TLS session says so (a device can tell the
            # broker's close from a cut connection); after a fatal TLS error OpenSSL sends
            # nothing more.
            self.tls.close_notify()
            self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        if self.session is not None:
            self.session.ended(cause, graceful=self.mqtt.disconnected)
        self.listener.connection_closed(self)

    # -- plumbing ----------------------------------------------------------------------------
    def flush(self) -> None:
        if not self._closed:
            self._flush()

    def _flush(self) -> None:
        data = self.mqtt.data_to_send()
        try:
            if data:
                self.tls.send(data)
            out = self.tls.outgoing()
        except TlsError:
            out = b""
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _schedule_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.mqtt.next_timer()
        if when is not None and not self._closed:
            self._timer = self.listener.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.mqtt.handle_timer(self.listener.loop.time())
        self._drain()
        self._schedule_timer()
