"""One admitted device on an MQTT connection: its uplinks (PUBACK only after Redis took
them), its subscriptions and downlinks, its will, its revocation.

``MqttProtocol`` moves bytes and hands this object the core's events; the session
answers through the connection core (``conn.mqtt``) and closes through ``conn``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.mqtt import codec, policy
from corem_ingress.adapters.mqtt import downlink as dl
from corem_ingress.adapters.mqtt.admission import Admitted
from corem_ingress.adapters.mqtt.codec import Publish, Subscribe, Unsubscribe
from corem_ingress.adapters.mqtt.properties import EMPTY, Prop, Properties, Reason
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import DeliveryState, Downlink, DropReason
from corem_ingress.core.errors import PermissionDenied, Unavailable
from corem_ingress.core.identity import DeviceIdentity
from corem_ingress.core.sessions import DisconnectOrder
from corem_ingress.core.uplink import (
    JsonValue,
    Transport,
    Uplink,
    UplinkKind,
    payload_from_bytes,
)

if TYPE_CHECKING:
    from corem_ingress.adapters.mqtt.protocol import MqttProtocol

log = structlog.get_logger("corem.mqtt")

TRANSPORT = "mqtt"
#: Bytes queued to a slow client beyond which downlinks are not delivered.
_WRITE_LIMIT = 256 * 1024
#: Message ids of queued downlinks written on this connection, kept to answer "delivered".
_WRITTEN_KEPT = 256
#: Wait before trying the queue again after Redis failed (the device waits for it).
_RETRY_S = 0.5
#: Allowed topics whose kind a session remembers (one per uplink kind exists).
_KINDS_KEPT = 8
#: Read per message: a module constant (an Enum class attribute read is slow on 3.11).
_MQTT: Final = Transport.MQTT


class DeviceSession:
    __slots__ = (
        "_acks",
        "_again",
        "_conn",
        "_drain_task",
        "_kinds",
        "_paused",
        "_queued",
        "_results",
        "_subs",
        "_unacked",
        "admitted",
        "owner",
        "persistent",
        "session_expiry",
        "will",
        "will_delay",
    )

    def __init__(
        self,
        conn: MqttProtocol,
        admitted: Admitted,
        will: Publish | None,
        *,
        owner: str = "",
        persistent: bool = False,
        subscriptions: dl.Subscriptions | None = None,
        session_expiry: int = 0,
        will_delay: int = 0,
    ) -> None:
        self._conn = conn
        self.admitted = admitted
        #: The CONNECT's will, kept only when ``wills_as_uplinks`` is on.
        self.will = will
        self._subs: dl.Subscriptions | None = subscriptions
        self._unacked = 0
        self._paused = False
        #: "node|session" in the device's session record ("" if Redis had none for it).
        self.owner = owner
        #: The session outlives the connection: QoS 1 downlinks go through its queue.
        self.persistent = persistent
        #: Seconds the session outlives the connection (0: it ends with it).
        self.session_expiry = session_expiry if persistent else 0
        #: MQTT 5 Will Delay Interval: the will waits this long (at most the session's
        #: life) for a reconnect that cancels it.
        self.will_delay = will_delay
        #: Queued downlinks written and awaiting PUBACK: packet id -> (entry, message id).
        self._queued: dict[int, tuple[str, str]] = {}
        #: Entries PUBACKed, to remove from the queue (by the drain task, in order).
        self._acks: list[tuple[str, str]] = []
        #: Message id -> what became of it on this connection (delivered, not_subscribed...).
        self._results: dict[str, str] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._again = False
        #: Topics this session published to and their uplink kind: the ACL decision is a
        #: pure function of the session's identity and the topic, taken once per topic
        #: (bounded: a device publishes to at most one topic per kind; a refused topic
        #: closes the connection and is never kept).
        self._kinds: dict[str, UplinkKind] = {}

    @property
    def identity(self) -> DeviceIdentity:
        return self.admitted.auth.identity

    @property
    def session_id(self) -> str:
        return self.admitted.session_id

    # -- uplinks -------------------------------------------------------------------------------
    def on_publish(self, publish: Publish) -> None:
        conn = self._conn
        listener = conn.listener
        identity = self.identity
        kind = self._kinds.get(publish.topic)
        if kind is None:
            kind = self._kind(identity, publish.topic)
            if kind is None:
                return
        if listener.gate.check_message(identity.device_id) is not None:
            # Over limits.per_device_msgs_per_s: never stored, never acknowledged. QoS 0 is
            # dropped (at most once allows it); QoS 1/2 closes the connection: an MQTT 3.1.1
            # client re-sends its unacknowledged messages after reconnecting (no loss), and
            # a message left without PUBACK on a live connection would stall its window.
            listener.count("rate_limited")
            if publish.qos > 0:
                log.info("mqtt.rate_limited", peer=conn.peer, device=identity.device_id)
                conn.fail(Cause.DEVICE_RATE)
            return
        uplink = self._uplink(
            kind, publish.payload, envelope_properties(publish.properties), conn.received_at
        )
        self._unacked += 1
        if self._unacked > listener.config.max_inflight and not self._paused:
            self._paused = True
            conn.pause_reading()
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: self._stored(publish, error, started))

    def _kind(self, identity: DeviceIdentity, topic: str) -> UplinkKind | None:
        """The topic's uplink kind, remembered; None: refused (the connection closes)."""
        conn = self._conn
        try:
            kind = policy.uplink_kind(identity, topic)
        except PermissionDenied as exc:
            conn.listener.count("acl_violations")
            log.warning(
                "mqtt.publish_denied",
                peer=conn.peer,
                tenant=identity.tenant_id,
                device=identity.device_id,
                reason=exc.reason,
            )
            conn.fail(Cause.ACL_VIOLATION)
            return None
        if len(self._kinds) < _KINDS_KEPT:
            self._kinds[topic] = kind
        return kind

    def _stored(self, publish: Publish, error: Unavailable | None, started: float) -> None:
        """Batcher callback: acknowledge only what Redis took."""
        conn = self._conn
        listener = conn.listener
        self._unacked -= 1
        if error is None:
            listener.stored(started)  # uplink metrics, per batch
        else:
            metrics.uplink_failed(TRANSPORT)
        if conn.closed:
            return
        if error is not None:
            listener.count("store_failures")
            log.warning(
                "mqtt.uplink_not_stored", device=self.identity.device_id, reason=error.reason
            )
            # Not stored: no PUBACK. The client re-sends after reconnecting.
            conn.fail(Cause.STORAGE_UNAVAILABLE)
            return
        listener.count("uplinks")
        if publish.qos:  # QoS 0 has no acknowledgement to send
            conn.mqtt.ack_publish(publish)
            listener.mark_dirty(conn)
        if self._paused and self._unacked <= listener.config.max_inflight:
            self._paused = False
            conn.resume_reading()

    def _uplink(
        self,
        kind: UplinkKind,
        data: bytes,
        properties: dict[str, JsonValue] | None,
        received_at: float,
    ) -> Uplink:
        """The envelope of a message from this device (a PUBLISH or its will)."""
        payload, encoding = payload_from_bytes(data)
        return Uplink.new(
            self.identity,
            _MQTT,
            kind,
            payload,
            now=received_at,
            payload_encoding=encoding,
            properties=properties,
        )

    # -- subscriptions and downlinks -----------------------------------------------------------
    def on_subscribe(self, subscribe: Subscribe) -> None:
        identity = self.identity
        if self._subs is None:
            self._subs = dl.Subscriptions()
        subs = self._subs
        limit = self._conn.listener.config.max_subscriptions
        v5 = self._conn.mqtt.version == 5
        sub_id = subscribe.properties.int(Prop.SUBSCRIPTION_IDENTIFIER)
        codes: list[int] = []
        for topic_filter, qos in subscribe.filters:
            if v5 and topic_filter.startswith("$share/"):
                # Ingress only: no shared subscriptions (MQTT 5 reason 0x9E).
                codes.append(Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            elif not policy.subscribe_allowed(identity, topic_filter):
                codes.append(Reason.NOT_AUTHORIZED if v5 else codec.SUBACK_FAILURE)
                self._conn.listener.count("subscribe_denied")
                log.info(
                    "mqtt.subscribe_denied", device=identity.device_id, tenant=identity.tenant_id
                )
            elif len(subs) >= limit and topic_filter not in subs:
                # mqtt.max_subscriptions: refused per filter (a re-subscribe replaces).
                codes.append(Reason.QUOTA_EXCEEDED if v5 else codec.SUBACK_FAILURE)
                self._conn.listener.count("subscriptions_over_limit")
                log.info("mqtt.subscriptions_over_limit", device=identity.device_id, limit=limit)
            else:
                granted = policy.granted_qos(qos)
                subs.add(topic_filter, granted, sub_id)
                codes.append(granted)
        self._answer_after_save(lambda: self._conn.mqtt.suback(subscribe.packet_id, codes))

    def on_unsubscribe(self, unsubscribe: Unsubscribe) -> None:
        reasons: list[int] = []
        for topic_filter in unsubscribe.filters:
            held = self._subs is not None and topic_filter in self._subs
            if held and self._subs is not None:
                self._subs.remove(topic_filter)
            reasons.append(Reason.SUCCESS if held else Reason.NO_SUBSCRIPTION_EXISTED)
        if self._conn.mqtt.version == 5:
            self._answer_after_save(
                lambda: self._conn.mqtt.unsuback(unsubscribe.packet_id, reasons)
            )
        else:  # 3.1.1: the core answered on receipt
            self._answer_after_save(lambda: None)

    def _answer_after_save(self, answer: Callable[[], None]) -> None:
        """A persistent session's SUBACK/UNSUBACK goes out once Redis holds its
        subscriptions (in order, through the session's one task); else at once."""
        if not self.persistent:
            answer()
            return
        previous = self._drain_task
        self._drain_task = asyncio.get_running_loop().create_task(self._save_then(previous, answer))

    async def _save_then(
        self, previous: asyncio.Task[None] | None, answer: Callable[[], None]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self._save(answer)
        finally:
            if self._again:  # kicked while saving (a PUBACK counts even after the close)
                await self._drain()

    async def _save(self, answer: Callable[[], None]) -> None:
        conn = self._conn
        if conn.closed:
            return
        subs = self._subs.to_json() if self._subs is not None else "[]"
        try:
            held = await conn.listener.services.device_sessions.save_subscriptions(
                self.identity.device_id, self.owner, subs
            )
        except Unavailable as exc:
            log.warning("mqtt.session_not_saved", device=self.identity.device_id, reason=exc.reason)
            conn.fail(Cause.STORAGE_UNAVAILABLE)  # no SUBACK: the client subscribes again
            return
        if not held:
            conn.close(Cause.TAKEN_OVER)
            return
        answer()
        conn.flush()

    async def deliver(self, downlink: Downlink, queued: bool = False) -> str:
        """DownlinkRouter sink: publish to devices/{id}/down/{kind} if subscribed. A
        downlink queued for a persistent session goes out from the queue."""
        conn = self._conn
        if queued and self.persistent:
            self.kick()
            task = self._drain_task
            if task is not None:
                await asyncio.wait([task], timeout=conn.listener.services.stores.timeout_s)
            return self._results.get(downlink.message_id, DropReason.NOT_DELIVERED.value)
        if conn.closed:
            return DropReason.NOT_DELIVERED.value
        planned = dl.plan(self._subs, downlink) if self._subs is not None else None
        if planned is None:
            return DropReason.NOT_SUBSCRIBED.value
        if conn.write_buffer_size() > _WRITE_LIMIT:
            return DropReason.NOT_DELIVERED.value
        topic, qos = planned
        ids = self._subs.subscription_ids(topic) if self._subs is not None else ()
        sent = conn.mqtt.send_publish(topic, downlink.payload_bytes(), qos, ids)
        conn.flush()
        if not sent:
            return DropReason.NOT_DELIVERED.value
        conn.listener.count("downlinks")
        return DeliveryState.DELIVERED.value

    # -- the persistent session's queue --------------------------------------------------------
    def on_puback(self, packet_id: int) -> None:
        """A queued downlink was acknowledged: it leaves the queue (then the next goes)."""
        done = self._queued.pop(packet_id, None)
        if done is not None:
            self._acks.append(done)
            self.kick()

    def kick(self) -> None:
        """Send what the queue holds, up to the window (one task per session, in order)."""
        if not self.persistent or (self._conn.closed and not self._acks):
            return
        self._again = True
        task = self._drain_task
        if task is None or task.done():
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        # else: the running task sees _again (a save task runs _drain after it, below)

    async def _drain(self) -> None:
        conn = self._conn
        store = conn.listener.services.device_sessions
        device_id = self.identity.device_id
        try:
            while self._again:
                self._again = False
                # PUBACKs first, even after the connection closed (they were received).
                acks, self._acks = self._acks, []
                free = conn.mqtt.send_window - conn.mqtt.inflight
                if conn.closed or conn.write_buffer_size() > _WRITE_LIMIT:
                    free = 0
                if free <= 0 and not acks:
                    continue
                in_flight = [mid for _entry, mid in self._queued.values()]
                now = conn.listener.services.clock()
                try:
                    fetched = await store.fetch(
                        device_id,
                        self.owner,
                        now=now,
                        count=max(0, free),
                        in_flight=in_flight,
                        acked=acks,
                    )
                except Unavailable:
                    self._acks[:0] = acks  # not applied: again with the next attempt
                    raise
                if fetched is None:  # another node resumed the session
                    conn.close(Cause.TAKEN_OVER)
                    return
                if fetched.expired:
                    metrics.downlink_dropped(DropReason.EXPIRED.value, len(fetched.expired))
                    for message_id in fetched.expired:
                        self._remember(message_id, DropReason.EXPIRED.value)
                        log.info(
                            "downlink.dropped",
                            device=device_id,
                            message_id=message_id,
                            reason=DropReason.EXPIRED.value,
                        )
                for entry, downlink, dup in fetched.entries:
                    await self._send_queued(entry, downlink, dup, now)
                conn.flush()
        except Unavailable as exc:
            # Kept in the queue; tried again shortly (and on the next PUBACK or downlink).
            log.warning("mqtt.queue_unavailable", device=device_id, reason=exc.reason)
            if not conn.closed or self._acks:
                conn.listener.loop.call_later(_RETRY_S, self.kick)

    async def _send_queued(self, entry: str, downlink: Downlink, dup: bool, now: float) -> None:
        conn = self._conn
        store = conn.listener.services.device_sessions
        device_id = self.identity.device_id
        message_id = downlink.message_id
        planned = dl.plan(self._subs, downlink) if self._subs is not None else None
        if planned is None:
            await store.done(device_id, entry, message_id)
            self._remember(message_id, DropReason.NOT_SUBSCRIBED.value)
            metrics.downlink_dropped(DropReason.NOT_SUBSCRIBED.value)
            log.info(
                "downlink.dropped",
                device=device_id,
                message_id=message_id,
                reason=DropReason.NOT_SUBSCRIBED.value,
            )
            return
        topic, _qos = planned  # queued downlinks are QoS 1 (granted 0 is served as 1)
        ids = self._subs.subscription_ids(topic) if self._subs is not None else ()
        pid = conn.mqtt.publish_qos1(
            topic, downlink.payload_bytes(), ids, dup=dup, message_expiry=downlink.expiry_left(now)
        )
        if pid is None:  # the window closed meanwhile: stays queued (fetched again later)
            return
        if pid == 0:  # larger than the client takes: it never will
            await store.done(device_id, entry, message_id)
            self._remember(message_id, DropReason.NOT_DELIVERED.value)
            metrics.downlink_dropped(DropReason.NOT_DELIVERED.value)
            return
        self._queued[pid] = (entry, message_id)
        self._remember(message_id, DeliveryState.DELIVERED.value)
        conn.listener.count("downlinks_redelivered" if dup else "downlinks")

    def _remember(self, message_id: str, result: str) -> None:
        results = self._results
        results[message_id] = result
        if len(results) > _WRITTEN_KEPT:
            del results[next(iter(results))]

    # -- the end -------------------------------------------------------------------------------
    def disconnect(self, order: DisconnectOrder) -> None:
        """SessionHub callback: the credential was revoked or expired."""
        log.info("mqtt.disconnect", session=order.session_id, cause=order.cause.label)
        self._conn.listener.count("revocation_closes")
        self._conn.close(order.cause)

    def ended(self, cause: Cause, *, graceful: bool) -> None:
        """The connection is gone: store the will (unless the client said DISCONNECT or the
        broker closed it), give back the slot, forget the session everywhere."""
        listener = self._conn.listener
        services = listener.services
        listener.gate.close_session(self.admitted.slot)
        if self.will is not None and not graceful:
            delay = min(self.will_delay, self.session_expiry)
            if delay > 0 and self.owner:
                listener.delay_will(self._delayed_will(self.will, delay))
            else:
                self._store_will(self.will)
        services.sessions.unregister(self.session_id)
        services.downlinks.remove(self.identity.device_id, self.session_id)
        if self.owner:
            listener.spawn(self._close_record())
        log.info(
            "mqtt.session_closed",
            session=self.session_id,
            device=self.identity.device_id,
            cause=cause.label,
        )

    async def _close_record(self) -> None:
        """The session record: kept for its expiry (persistent) or removed; untouched if
        another connection took it over."""
        device_id = self.identity.device_id
        try:
            await self._conn.listener.services.device_sessions.close(device_id, self.owner)
        except Unavailable as exc:
            log.warning("mqtt.session_not_closed", device=device_id, reason=exc.reason)

    async def _delayed_will(self, will: Publish, delay: int) -> None:
        """Stored after ``delay`` seconds unless the device reconnected meanwhile, on any
        node (its CONNECT deletes the pending will in Redis)."""
        store = self._conn.listener.services.device_sessions
        device_id = self.identity.device_id
        token = uuid.uuid4().hex
        try:
            await store.pend_will(device_id, token, delay + 60)
            await asyncio.sleep(delay)
            due = await store.claim_will(device_id, token)
        except Unavailable as exc:
            log.warning("mqtt.will_delay_unavailable", device=device_id, reason=exc.reason)
            due = True  # never silently lost: stored now (may be a reconnect's duplicate)
        if due:
            self._store_will(will)
        else:
            log.info("mqtt.will_cancelled", device=device_id, reason="reconnected")
            self._conn.listener.count("wills_cancelled")

    def _store_will(self, will: Publish) -> None:
        """The device went away without DISCONNECT: its will becomes an uplink (if allowed)."""
        listener = self._conn.listener
        try:
            kind = policy.uplink_kind(self.identity, will.topic)
        except PermissionDenied:
            log.info("mqtt.will_ignored", device=self.identity.device_id, reason="foreign topic")
            return
        uplink = self._uplink(
            kind, will.payload, envelope_properties(will.properties), listener.services.clock()
        )
        listener.count("wills_stored")
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: _will_stored(error, started))


def envelope_properties(p: Properties) -> dict[str, JsonValue] | None:
    """The MQTT 5 properties an uplink envelope carries (bounded by the core:
    ``connection.MAX_USER_PROPERTIES``/``MAX_PROPERTY_BYTES``); None if there are none."""
    if p is EMPTY:  # MQTT 3.1.1, and most MQTT 5 PUBLISHes: nothing to look up
        return None
    out: dict[str, JsonValue] = {}
    content_type = p.str(Prop.CONTENT_TYPE)
    if content_type is not None:
        out["content_type"] = content_type
    indicator = p.int(Prop.PAYLOAD_FORMAT_INDICATOR)
    if indicator is not None:
        out["payload_format_indicator"] = indicator
    if p.user:
        out["user_properties"] = [[name, value] for name, value in p.user]
    return out or None


def _will_stored(error: Unavailable | None, started: float) -> None:
    if error is None:
        metrics.uplink_appended(TRANSPORT, time.perf_counter() - started)
    else:
        metrics.uplink_failed(TRANSPORT)
