"""One admitted device on an MQTT connection: its uplinks (PUBACK only after Redis took
them), its subscriptions and downlinks, its will, its revocation.

``MqttProtocol`` moves bytes and hands this object the core's events; the session
answers through the connection core (``conn.mqtt``) and closes through ``conn``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.mqtt import codec, policy
from corem_ingress.adapters.mqtt import downlink as dl
from corem_ingress.adapters.mqtt.admission import Admitted
from corem_ingress.adapters.mqtt.codec import Publish, Subscribe, Unsubscribe
from corem_ingress.adapters.mqtt.properties import Prop, Properties, Reason
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import Downlink
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


class DeviceSession:
    __slots__ = ("_conn", "_paused", "_subs", "_unacked", "admitted", "will")

    def __init__(self, conn: MqttProtocol, admitted: Admitted, will: Publish | None) -> None:
        self._conn = conn
        self.admitted = admitted
        #: The CONNECT's will, kept only when ``wills_as_uplinks`` is on.
        self.will = will
        self._subs: dl.Subscriptions | None = None
        self._unacked = 0
        self._paused = False

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
        try:
            kind = policy.uplink_kind(identity, publish.topic)
        except PermissionDenied as exc:
            listener.count("acl_violations")
            log.warning(
                "mqtt.publish_denied",
                peer=conn.peer,
                tenant=identity.tenant_id,
                device=identity.device_id,
                reason=exc.reason,
            )
            conn.fail(Cause.ACL_VIOLATION)
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
        uplink = self._uplink(kind, publish.payload, envelope_properties(publish.properties))
        self._unacked += 1
        if self._unacked > listener.config.max_inflight and not self._paused:
            self._paused = True
            conn.pause_reading()
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: self._stored(publish, error, started))

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
        conn.mqtt.ack_publish(publish)
        listener.mark_dirty(conn)
        if self._paused and self._unacked <= listener.config.max_inflight:
            self._paused = False
            conn.resume_reading()

    def _uplink(
        self, kind: UplinkKind, data: bytes, properties: dict[str, JsonValue] | None = None
    ) -> Uplink:
        """The envelope of a message from this device (a PUBLISH or its will)."""
        payload, encoding = payload_from_bytes(data)
        return Uplink.new(
            self.identity,
            Transport.MQTT,
            kind,
            payload,
            now=self._conn.listener.services.clock(),
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
        self._conn.mqtt.suback(subscribe.packet_id, codes)

    def on_unsubscribe(self, unsubscribe: Unsubscribe) -> None:
        reasons: list[int] = []
        for topic_filter in unsubscribe.filters:
            held = self._subs is not None and topic_filter in self._subs
            if held and self._subs is not None:
                self._subs.remove(topic_filter)
            reasons.append(Reason.SUCCESS if held else Reason.NO_SUBSCRIPTION_EXISTED)
        self._conn.mqtt.unsuback(unsubscribe.packet_id, reasons)  # MQTT 5 only

    async def deliver(self, downlink: Downlink) -> bool:
        """DownlinkRouter sink: publish to devices/{id}/down/{kind} if subscribed."""
        conn = self._conn
        if conn.closed or self._subs is None:
            return False
        planned = dl.plan(self._subs, downlink)
        if planned is None or conn.write_buffer_size() > _WRITE_LIMIT:
            return False
        topic, qos = planned
        ids = self._subs.subscription_ids(topic)
        sent = conn.mqtt.send_publish(topic, downlink.payload_bytes(), qos, ids)
        conn.flush()
        if sent:
            conn.listener.count("downlinks")
        return sent

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
            self._store_will(self.will)
        services.sessions.unregister(self.session_id)
        services.downlinks.remove(self.identity.device_id, self.session_id)
        log.info(
            "mqtt.session_closed",
            session=self.session_id,
            device=self.identity.device_id,
            cause=cause.label,
        )

    def _store_will(self, will: Publish) -> None:
        """The device went away without DISCONNECT: its will becomes an uplink (if allowed)."""
        listener = self._conn.listener
        try:
            kind = policy.uplink_kind(self.identity, will.topic)
        except PermissionDenied:
            log.info("mqtt.will_ignored", device=self.identity.device_id, reason="foreign topic")
            return
        uplink = self._uplink(kind, will.payload)
        listener.count("wills_stored")
        started = time.perf_counter()
        listener.batcher.submit(uplink, lambda error: _will_stored(error, started))


def envelope_properties(p: Properties) -> dict[str, JsonValue] | None:
    """The MQTT 5 properties an uplink envelope carries (bounded by the core:
    ``connection.MAX_USER_PROPERTIES``/``MAX_PROPERTY_BYTES``); None if there are none."""
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
