"""The asyncio layer of one MQTT-over-TLS connection: it moves bytes and carries out decisions.

socket -> TlsSession (memory BIOs) -> MqttConnection (sans-I/O core) -> events, which are
handled here with the listener's services: authentication, topic policy, the Redis append
before PUBACK, downlink delivery, revocation.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.mqtt import downlink as dl
from corem_ingress.adapters.mqtt import policy
from corem_ingress.adapters.mqtt.auth import Authenticated, authenticate
from corem_ingress.adapters.mqtt.codec import Connect, Publish, Subscribe, Unsubscribe
from corem_ingress.adapters.mqtt.connection import CLIENT_DISCONNECT, MqttConnection, State
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    PublishReceived,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.adapters.mqtt.tls import TlsError, TlsSession
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import (
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    IngressError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from corem_ingress.core.sessions import DisconnectOrder, LiveSession
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind, payload_from_bytes

if TYPE_CHECKING:
    from corem_ingress.adapters.mqtt.listener import MqttListener

log = structlog.get_logger("corem.mqtt")

#: One socket read buffer shared by every connection: each read is consumed at once.
_READ = bytearray(64 * 1024)
_READ_VIEW = memoryview(_READ)
#: Bytes queued to a slow client beyond which downlinks are not delivered.
_WRITE_LIMIT = 256 * 1024
TRANSPORT = "mqtt"


def _auth_reason(exc: IngressError) -> str:
    """The metrics label of a refused CONNECT (see metrics.AUTH_REASONS)."""
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, InvalidArgument):
        return "malformed"
    if isinstance(exc, PermissionDenied):
        return "identity_mismatch"  # client id is not the device id
    if exc.reason.startswith("no "):  # no client certificate / no certificate and no password
        return "no_credential"
    return exc.reason


class MqttProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "_auth",
        "_closed",
        "_ip",
        "_listener",
        "_paused",
        "_peer",
        "_slot",
        "_subs",
        "_task",
        "_timer",
        "_transport",
        "_unacked",
        "_will",
        "mqtt",
        "session_id",
        "tls",
    )

    def __init__(self, listener: MqttListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self.tls = TlsSession(listener.tls_context)
        self.mqtt = MqttConnection(listener.connection_config, listener.loop.time())
        self._timer: asyncio.TimerHandle | None = None
        self._auth: Authenticated | None = None
        #: The CONNECT's will, kept only when ``wills_as_uplinks`` is on.
        self._will: Publish | None = None
        self._subs: dl.Subscriptions | None = None
        self._unacked = 0
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        self._peer = ""
        self._ip = ""
        #: The tenant whose connection slot this connection holds (limits), if any.
        self._slot: str | None = None
        self.session_id = ""

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._ip = str(peer[0]) if peer else "?"
        listener = self._listener
        listener.connection_opened(self)
        metrics.connection_opened(TRANSPORT)
        services = listener.services
        if services.throttle.blocked(self._ip, services.clock()):
            # Throttled source: closed before any TLS work (the handshake is the costly part).
            listener.count("throttled")
            metrics.limit_refused(TRANSPORT, "auth_throttle")
            self._close("source address throttled", error=True)
            return
        self._schedule_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        data = bytes(_READ_VIEW[:nbytes])
        handshaking = not self.tls.handshake_done
        try:
            plain = self.tls.receive(data)
        except TlsError as exc:
            self._listener.count("tls_failures")
            log.info("mqtt.tls_failed", peer=self._peer, error=str(exc))
            if handshaking:
                self._handshake_failed()
            self._close("TLS failure", error=True)
            return
        if handshaking and self.tls.handshake_done:
            metrics.handshake(TRANSPORT, ok=True)
        if plain:
            self.mqtt.receive_data(plain, self._listener.loop.time())
            self._drain()
        if self.tls.closed:
            self._close("peer sent close_notify", error=False)
            return
        self._flush()

    def eof_received(self) -> bool | None:
        self._close("peer closed", error=False)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("connection lost", error=False)

    # -- events ------------------------------------------------------------------------------
    def _drain(self) -> None:
        while (event := self.mqtt.next_event()) is not None:
            if isinstance(event, PublishReceived):
                self._on_publish(event.publish)
            elif isinstance(event, ConnectReceived):
                self._task = self._listener.loop.create_task(self._authenticate(event.connect))
            elif isinstance(event, SubscribeReceived):
                self._on_subscribe(event.subscribe)
            elif isinstance(event, UnsubscribeReceived):
                self._on_unsubscribe(event.unsubscribe)
            elif isinstance(event, ConnectionClosed):
                if event.error:
                    self._listener.count("protocol_closes")
                    if "exceeds max_packet_size" in event.reason:
                        metrics.limit_refused(TRANSPORT, "max_size")
                    log.info("mqtt.closed", peer=self._peer, reason=event.reason)
                self._close(event.reason, error=event.error)
        self._flush()

    async def _authenticate(self, connect: Connect) -> None:
        try:
            await self._authenticate_inner(connect)
        except Exception:  # a bug must not leave the socket hanging in AUTHENTICATING
            log.exception("mqtt.authenticate_failed", peer=self._peer)
            if not self._closed:
                self.mqtt.refuse(CONNACK_SERVER_UNAVAILABLE, "internal error")  # if not yet
                self._drain()
                self.close("internal error")  # _close unregisters whatever was registered
        finally:
            self._task = None  # an idle connection keeps no finished task

    def _handshake_failed(self) -> None:
        """A failed TLS handshake (e.g. a client certificate we do not accept) counts as a
        failed authentication of the source address."""
        services = self._listener.services
        metrics.handshake(TRANSPORT, ok=False)
        metrics.auth_failure(TRANSPORT, "handshake_failed")
        if services.throttle.failure(self._ip, services.clock()):
            log.warning("mqtt.source_blocked", peer=self._ip, block_s=services.throttle.block_s)

    async def _authenticate_inner(self, connect: Connect) -> None:
        listener = self._listener
        services = listener.services
        now = services.clock()
        if services.throttle.blocked(self._ip, now):
            # Blocked while this connection was being set up: no credential work.
            listener.count("throttled")
            metrics.limit_refused(TRANSPORT, "auth_throttle")
            self.mqtt.refuse(CONNACK_NOT_AUTHORIZED, "source address throttled")
            self._drain()
            return
        try:
            auth = await authenticate(
                listener.services.resolver,
                connect,
                self.tls.peer_fingerprint(),
                client_auth=listener.config.client_auth,
            )
        except IngressError as exc:
            metrics.auth_failure(TRANSPORT, _auth_reason(exc))
            # UNAVAILABLE (Redis down) is not the device's fault: not counted against it.
            if not isinstance(exc, Unavailable) and services.throttle.failure(self._ip, now):
                log.warning("mqtt.source_blocked", peer=self._ip, block_s=services.throttle.block_s)
            if self._closed:
                return
            listener.count("connect_refused")
            log.info(
                "mqtt.connect_refused",
                peer=self._peer,
                code=exc.mqtt_connack,
                reason=exc.reason,
            )
            self.mqtt.refuse(exc.mqtt_connack, exc.reason)
            self._drain()
            return
        services.throttle.success(self._ip)
        if self._closed:
            return
        self._auth = auth
        if listener.config.wills_as_uplinks and connect.will_topic is not None:
            self._will = Publish(connect.will_topic, connect.will_payload or b"", 1)
        self.session_id = listener.new_session_id()
        identity = auth.identity
        listener.services.sessions.register(
            LiveSession(self.session_id, Transport.MQTT.value, identity, auth.lookup),
            self._disconnect,
        )
        # A revocation that landed between the lookup and the registration evicted the
        # cache entry: ask again now that any later revocation reaches this session.
        try:
            await listener.services.resolver.resolve_lookup(identity.credential_kind, auth.lookup)
        except IngressError as exc:
            listener.services.sessions.unregister(self.session_id)
            self._auth = None
            metrics.auth_failure(TRANSPORT, _auth_reason(exc))
            if not self._closed:
                listener.count("connect_refused")
                self.mqtt.refuse(exc.mqtt_connack, exc.reason)
                self._drain()
            return
        if self._closed:
            return
        if not self._take_slot(identity.tenant_id, identity.device_id):
            # The tenant's connections on this node are at limits.per_tenant_max_connections:
            # CONNACK 3 (server unavailable), retried by clients with back-off (another node
            # behind the load balancer may have room); not an authentication failure.
            listener.services.sessions.unregister(self.session_id)
            self._auth = None
            listener.count("tenant_limit")
            metrics.limit_refused(TRANSPORT, "tenant_connections")
            log.info("mqtt.connect_refused", peer=self._peer, code=3, reason="tenant limit")
            self.mqtt.refuse(CONNACK_SERVER_UNAVAILABLE, "tenant connection limit")
            self._drain()
            return
        listener.claim(identity.device_id, self)
        listener.services.downlinks.add(identity.device_id, self.session_id, self.deliver)
        self.mqtt.accept(listener.loop.time(), connect.keepalive)
        listener.count("connect_accepted")
        metrics.session_opened(TRANSPORT, identity.tenant_id)
        log.info(
            "mqtt.connected",
            peer=self._peer,
            tenant=identity.tenant_id,
            device=identity.device_id,
            credential=identity.credential_kind.value,
            session=self.session_id,
        )
        self._schedule_timer()
        self._drain()

    def _on_publish(self, publish: Publish) -> None:
        auth = self._auth
        assert auth is not None
        listener = self._listener
        try:
            kind = policy.uplink_kind(auth.identity, publish.topic)
        except PermissionDenied as exc:
            listener.count("acl_violations")
            log.warning(
                "mqtt.publish_denied",
                peer=self._peer,
                tenant=auth.identity.tenant_id,
                device=auth.identity.device_id,
                reason=exc.reason,
            )
            self._close("publish outside the device's topics", error=True)
            return
        services = listener.services
        rate = services.device_rate
        if rate.enabled and not rate.allow(auth.identity.device_id, services.clock()):
            # Over limits.per_device_msgs_per_s: never stored, never acknowledged. QoS 0 is
            # dropped (at most once allows it); QoS 1/2 closes the connection: an MQTT 3.1.1
            # client re-sends its unacknowledged messages after reconnecting (no loss), and
            # a message left without PUBACK on a live connection would stall its window.
            listener.count("rate_limited")
            metrics.limit_refused(TRANSPORT, "device_rate")
            if publish.qos > 0:
                log.info("mqtt.rate_limited", peer=self._peer, device=auth.identity.device_id)
                self._close("device message rate exceeded", error=True)
            return
        uplink = self._uplink(auth, kind, publish.payload)
        self._unacked += 1
        if self._unacked > listener.config.max_inflight and not self._paused:
            self._paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: self._stored(publish, error, started))

    def _stored(self, publish: Publish, error: Unavailable | None, started: float) -> None:
        """Batcher callback: acknowledge only what Redis took."""
        listener = self._listener
        self._unacked -= 1
        if error is None:
            listener.stored(started)  # uplink metrics, per batch
        else:
            metrics.uplink_failed(TRANSPORT)
        if self._closed:
            return
        if error is not None:
            listener.count("store_failures")
            log.warning("mqtt.uplink_not_stored", device=self.device_id, reason=error.reason)
            # Not stored: no PUBACK. The client re-sends after reconnecting.
            self._close("uplink storage unavailable", error=True)
            return
        listener.count("uplinks")
        self.mqtt.ack_publish(publish)
        listener.mark_dirty(self)
        if self._paused and self._unacked <= listener.config.max_inflight:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def _on_subscribe(self, subscribe: Subscribe) -> None:
        auth = self._auth
        assert auth is not None
        if self._subs is None:
            self._subs = dl.Subscriptions()
        codes: list[int] = []
        for topic_filter, qos in subscribe.filters:
            if policy.subscribe_allowed(auth.identity, topic_filter):
                granted = policy.granted_qos(qos)
                self._subs.add(topic_filter, granted)
                codes.append(granted)
            else:
                self._listener.count("subscribe_denied")
                log.info(
                    "mqtt.subscribe_denied",
                    device=auth.identity.device_id,
                    tenant=auth.identity.tenant_id,
                )
                codes.append(policy.SUBACK_FAILURE)
        self.mqtt.suback(subscribe.packet_id, codes)

    def _on_unsubscribe(self, unsubscribe: Unsubscribe) -> None:
        if self._subs is not None:
            for topic_filter in unsubscribe.filters:
                self._subs.remove(topic_filter)

    # -- downlinks and revocation ------------------------------------------------------------
    async def deliver(self, downlink: Downlink) -> bool:
        """DownlinkRouter sink: publish to devices/{id}/down/{kind} if subscribed."""
        if self._closed or self._subs is None or self._transport is None:
            return False
        planned = dl.plan(self._subs, downlink)
        if planned is None or self._transport.get_write_buffer_size() > _WRITE_LIMIT:
            return False
        topic, qos = planned
        sent = self.mqtt.send_publish(topic, downlink.payload_bytes(), qos)
        self._flush()
        if sent:
            self._listener.count("downlinks")
        return sent

    def _disconnect(self, order: DisconnectOrder) -> None:
        """SessionHub callback: the credential was revoked or expired."""
        log.info("mqtt.disconnect", session=order.session_id, reason=order.reason)
        self._listener.count("revocation_closes")
        self.close(order.reason)

    # -- closing -----------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Local close (revocation, take-over, shutdown): close_notify, then the socket."""
        if not self._closed:
            self._will = None  # a local close (revocation, take-over, shutdown): no will
            self.mqtt.close(reason)
            self.tls.close_notify()
            self._close(reason, error=False)

    def _close(self, reason: str, *, error: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self.mqtt.state is not State.CLOSED:
            self.mqtt.close(reason)
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        if self._slot is not None:
            self._listener.services.tenant_connections.release(self._slot)
            self._slot = None
        if self._auth is not None:
            services = self._listener.services
            if self._will is not None and reason != CLIENT_DISCONNECT:
                self._store_will(self._auth, self._will)
            services.sessions.unregister(self.session_id)
            services.downlinks.remove(self._auth.identity.device_id, self.session_id)
            log.info(
                "mqtt.session_closed",
                session=self.session_id,
                device=self._auth.identity.device_id,
                reason=reason,
            )
        self._listener.connection_closed(self)

    def _uplink(self, auth: Authenticated, kind: UplinkKind, data: bytes) -> Uplink:
        """The envelope of a message from this device (a PUBLISH or its will)."""
        payload, encoding = payload_from_bytes(data)
        return Uplink.new(
            auth.identity,
            Transport.MQTT,
            kind,
            payload,
            now=self._listener.services.clock(),
            payload_encoding=encoding,
        )

    def _store_will(self, auth: Authenticated, will: Publish) -> None:
        """The device went away without DISCONNECT: its will becomes an uplink (if allowed)."""
        listener = self._listener
        try:
            kind = policy.uplink_kind(auth.identity, will.topic)
        except PermissionDenied:
            log.info("mqtt.will_ignored", device=auth.identity.device_id, reason="foreign topic")
            return
        uplink = self._uplink(auth, kind, will.payload)
        listener.count("wills_stored")
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: _will_stored(error, started))

    def _take_slot(self, tenant_id: str, device_id: str) -> bool:
        """A connection slot of the tenant (limits.per_tenant_max_connections), if free.

        A device reconnecting while its old connection is still open takes that one's
        slot: the take-over closes the old connection first.
        """
        slots = self._listener.services.tenant_connections
        old = self._listener.holder(device_id)
        full = slots.max_per_tenant and slots.count(tenant_id) >= slots.max_per_tenant
        if full and old is not None and old is not self:
            self._listener.claim(device_id, self)
        if not slots.acquire(tenant_id):
            return False
        self._slot = tenant_id
        return True

    @property
    def device_id(self) -> str | None:
        return self._auth.identity.device_id if self._auth else None

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
            self._timer = self._listener.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.mqtt.handle_timer(self._listener.loop.time())
        self._drain()
        self._schedule_timer()


def _will_stored(error: Unavailable | None, started: float) -> None:
    if error is None:
        metrics.uplink_appended(TRANSPORT, time.perf_counter() - started)
    else:
        metrics.uplink_failed(TRANSPORT)
