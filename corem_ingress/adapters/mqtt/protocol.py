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
from corem_ingress.access_gate import AccessGate
from corem_ingress.adapters.mqtt import codec, policy
from corem_ingress.adapters.mqtt import downlink as dl
from corem_ingress.adapters.mqtt.admission import Admitted, admit
from corem_ingress.adapters.mqtt.auth import Authenticated
from corem_ingress.adapters.mqtt.codec import Connect, Publish, Subscribe, Unsubscribe
from corem_ingress.adapters.mqtt.connection import MqttConnection, State
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    PublishReceived,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.adapters.mqtt.tls import TlsError, TlsSession
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import PermissionDenied, Unavailable
from corem_ingress.core.sessions import DisconnectOrder
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


class MqttProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "_auth",
        "_closed",
        "_gate",
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
        self._gate: AccessGate = listener.gate
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
        if self._gate.check_source(self._ip) is not None:
            # Throttled source: closed before any TLS work (the handshake is the costly part).
            listener.count("throttled")
            self._close(Cause.AUTH_THROTTLE, error=True)
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
                # A failed TLS handshake (e.g. a client certificate we do not accept) counts
                # as a failed authentication of the source address.
                metrics.handshake(TRANSPORT, ok=False)
                self._gate.auth_failed(self._ip, Cause.HANDSHAKE_FAILED)
            self._close(Cause.HANDSHAKE_FAILED, error=True)
            return
        if handshaking and self.tls.handshake_done:
            metrics.handshake(TRANSPORT, ok=True)
        if plain:
            self.mqtt.receive_data(plain, self._listener.loop.time())
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
                    if event.cause is Cause.MAX_SIZE:
                        self._gate.refused(Cause.MAX_SIZE)
                    log.info(
                        "mqtt.closed", peer=self._peer, cause=event.cause.label, detail=event.detail
                    )
                self._close(event.cause, error=event.error)
        self._flush()

    async def _authenticate(self, connect: Connect) -> None:
        try:
            outcome = await admit(
                self._listener,
                self._gate,
                connect,
                self,
                ip=self._ip,
                peer=self._peer,
                fingerprint=self.tls.peer_fingerprint(),
                disconnect=self._disconnect,
                is_closed=lambda: self._closed,
            )
        except Exception:  # a bug must not leave the socket hanging in AUTHENTICATING
            log.exception("mqtt.authenticate_failed", peer=self._peer)
            if not self._closed:
                self.mqtt.refuse(Cause.CLOSED_BY_SERVER, "internal error")
                self._drain()
                self.close(Cause.CLOSED_BY_SERVER)  # _close unregisters what was registered
            return
        finally:
            self._task = None  # an idle connection keeps no finished task
        if self._closed:
            if isinstance(outcome, Admitted):
                self._listener.services.sessions.unregister(outcome.session_id)
                self._gate.close_session(outcome.slot)
            return
        if not isinstance(outcome, Admitted):
            self.mqtt.refuse(outcome.cause, outcome.detail)
            self._drain()
            return
        self._start_session(connect, outcome)

    def _start_session(self, connect: Connect, admitted: Admitted) -> None:
        listener = self._listener
        auth = admitted.auth
        identity = auth.identity
        self._auth = auth
        self._slot = admitted.slot
        self.session_id = admitted.session_id
        if listener.config.wills_as_uplinks and connect.will_topic is not None:
            self._will = Publish(connect.will_topic, connect.will_payload or b"", 1)
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
            self._close(Cause.ACL_VIOLATION, error=True)
            return
        if self._gate.check_message(auth.identity.device_id) is not None:
            # Over limits.per_device_msgs_per_s: never stored, never acknowledged. QoS 0 is
            # dropped (at most once allows it); QoS 1/2 closes the connection: an MQTT 3.1.1
            # client re-sends its unacknowledged messages after reconnecting (no loss), and
            # a message left without PUBACK on a live connection would stall its window.
            listener.count("rate_limited")
            if publish.qos > 0:
                log.info("mqtt.rate_limited", peer=self._peer, device=auth.identity.device_id)
                self._close(Cause.DEVICE_RATE, error=True)
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
            self._close(Cause.STORAGE_UNAVAILABLE, error=True)
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
                codes.append(codec.SUBACK_FAILURE)
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
        log.info("mqtt.disconnect", session=order.session_id, cause=order.cause.label)
        self._listener.count("revocation_closes")
        self.close(order.cause)

    # -- closing -----------------------------------------------------------------------------
    def close(self, cause: Cause) -> None:
        """Local close (revocation, take-over, shutdown): close_notify, then the socket."""
        if not self._closed:
            self._will = None  # a local close (revocation, take-over, shutdown): no will
            self.mqtt.close(cause)
            self.tls.close_notify()
            self._close(cause, error=False)

    def _close(self, cause: Cause, *, error: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self.mqtt.state is not State.CLOSED:
            self.mqtt.close(cause)
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        if self._slot is not None:
            self._gate.close_session(self._slot)
            self._slot = None
        if self._auth is not None:
            services = self._listener.services
            if self._will is not None and not self.mqtt.disconnected:
                self._store_will(self._auth, self._will)
            services.sessions.unregister(self.session_id)
            services.downlinks.remove(self._auth.identity.device_id, self.session_id)
            log.info(
                "mqtt.session_closed",
                session=self.session_id,
                device=self._auth.identity.device_id,
                cause=cause.label,
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
