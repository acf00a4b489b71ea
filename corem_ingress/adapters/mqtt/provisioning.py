"""Provisioning by claim over MQTT (docs/provisioning.md).

A CONNECT with no client certificate and a claim key (``ck_live_…``) as password is a
*claim session*: it may publish to ``$provisioning/claim/request`` (payload
``{"hardware_id": …}``) and subscribe under ``$provisioning/``, nothing else — no uplink,
no downlink, no device topic (any other PUBLISH closes the connection like an ACL
violation; other SUBSCRIBEs are refused per filter). Each request is answered on this
connection only, on the MQTT 5 Response Topic (with the Correlation Data echoed) when the
request names one under ``$provisioning/``, else on ``$provisioning/claim/response``:
the HTTP answer's JSON plus ``status`` (201 enrolled, 200 re-issued, 4xx/5xx with
``error``).

At CONNECT: the source throttle, the claim key (CONNACK 5 / 0x87 when unknown, revoked or
expired), the claim's and tenant's provisioning rate (CONNACK 3 / MQTT 5 0x97 quota
exceeded when the window is already full), the tenant's connection slot. Each request
resolves the claim again (a revocation stops the next request) and counts against the rate.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING

import structlog

from corem_ingress.adapters.mqtt.codec import Connect, Publish, Subscribe, Unsubscribe
from corem_ingress.adapters.mqtt.properties import Prop, Reason
from corem_ingress.core.causes import Cause
from corem_ingress.core.claims import CLAIM_KEY_PREFIX, parse_enrol_request
from corem_ingress.core.errors import IngressError
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.sessions import DisconnectOrder
from corem_ingress.store.registry.claims import ResolvedClaim

if TYPE_CHECKING:
    from corem_ingress.access_gate import AccessGate
    from corem_ingress.adapters.mqtt.protocol import MqttProtocol

log = structlog.get_logger("corem.mqtt")

PREFIX = "$provisioning/"
REQUEST_TOPIC = "$provisioning/claim/request"
RESPONSE_TOPIC = "$provisioning/claim/response"
_SUBACK_FAILURE = 0x80
_CLAIM_PREFIX = CLAIM_KEY_PREFIX.encode()


def presents_claim(connect: Connect, fingerprint: str | None) -> bool:
    """A CONNECT whose credential is a claim key (a certificate always wins)."""
    password = connect.password
    return fingerprint is None and password is not None and password.startswith(_CLAIM_PREFIX)


async def admit_claim(
    conn: MqttProtocol, gate: AccessGate, connect: Connect, ip: str
) -> ClaimSession | Cause:
    """A claim session, or the refusal's cause (its CONNACK code)."""
    if gate.check_source(ip) is not None:
        return Cause.AUTH_THROTTLE
    services = conn.listener.services
    registry = services.registry
    assert connect.password is not None
    try:
        key = connect.password.decode("ascii")
    except UnicodeDecodeError:
        gate.auth_failed(ip, Cause.MALFORMED)
        return Cause.MALFORMED
    try:
        resolved = await registry.resolve_claim_key(key)
        cfg = services.config.provisioning
        if await registry.provisioning_rate_full(
            resolved, per_claim=cfg.claim_rate_per_minute, per_tenant=cfg.tenant_rate_per_minute
        ):
            return Cause.PROVISIONING_RATE
    except IngressError as exc:
        gate.auth_failed(ip, exc.cause)
        log.info("mqtt.claim_refused", peer=conn.peer, cause=exc.cause.label, detail=exc.reason)
        return exc.cause
    if gate.open_session(resolved.tenant_id) is not None:
        return Cause.TENANT_CONNECTIONS
    conn.listener.count("claim_sessions")
    log.info("mqtt.claim_connected", peer=conn.peer, tenant=resolved.tenant_id)
    return ClaimSession(conn, gate, resolved, key)


class ClaimSession:
    """What an admitted claim may do on its connection (module doc)."""

    __slots__ = ("_conn", "_gate", "_key", "_tasks", "identity", "resolved", "session_id", "will")

    def __init__(
        self, conn: MqttProtocol, gate: AccessGate, resolved: ResolvedClaim, key: str
    ) -> None:
        self._conn = conn
        self._gate = gate
        self._key = key  # re-resolved per request; never logged
        self.resolved = resolved
        #: Not a device: the claim, so that no device's registry entry ever names it.
        self.identity = DeviceIdentity(
            resolved.tenant_id, f"claim:{resolved.claim_id}", CredentialKind.API_KEY, ""
        )
        self.session_id = "claim-" + secrets.token_hex(6)
        self.will: Publish | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def on_publish(self, publish: Publish) -> None:
        if publish.topic != REQUEST_TOPIC:
            self._conn.listener.count("acl_violations")
            log.warning("mqtt.claim_publish_denied", peer=self._conn.peer)
            self._conn.fail(Cause.ACL_VIOLATION)
            return
        task = self._conn.listener.loop.create_task(self._serve(publish))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_subscribe(self, subscribe: Subscribe) -> None:
        v5 = self._conn.mqtt.version == 5
        codes = [
            0
            if topic_filter.startswith(PREFIX)
            else (Reason.NOT_AUTHORIZED if v5 else _SUBACK_FAILURE)
            for topic_filter, _qos in subscribe.filters
        ]
        self._conn.mqtt.suback(subscribe.packet_id, codes)

    def on_unsubscribe(self, unsubscribe: Unsubscribe) -> None:
        self._conn.mqtt.unsuback(unsubscribe.packet_id, [Reason.SUCCESS] * len(unsubscribe.filters))

    def on_puback(self, packet_id: int) -> None:
        """Replies go out at QoS 0: nothing awaits a PUBACK on a claim session."""

    def disconnect(self, order: DisconnectOrder) -> None:
        self._conn.close(order.cause)

    def ended(self, cause: Cause, *, graceful: bool) -> None:
        for task in self._tasks:
            task.cancel()
        self._gate.close_session(self.resolved.tenant_id)

    async def _serve(self, publish: Publish) -> None:
        reply = await answer(self._conn, self._key, publish.payload)
        conn = self._conn
        if conn.closed:
            return
        conn.mqtt.ack_publish(publish)
        topic, extra = RESPONSE_TOPIC, []
        asked = publish.properties.str(Prop.RESPONSE_TOPIC)
        if asked is not None and asked.startswith(PREFIX):
            topic = asked
            correlation = publish.properties.values.get(Prop.CORRELATION_DATA)
            if isinstance(correlation, bytes):
                extra.append((Prop.CORRELATION_DATA, correlation))
        body = json.dumps(reply, separators=(",", ":")).encode()
        conn.mqtt.send_publish(topic, body, 0, extra_properties=extra)
        conn.flush()


async def answer(conn: MqttProtocol, key: str, payload: bytes) -> dict[str, object]:
    """One enrolment request's answer: the HTTP body plus its ``status``."""
    services = conn.listener.services
    registry = services.registry
    cfg = services.config.provisioning
    try:
        resolved = await registry.resolve_claim_key(key)  # revoked meanwhile: refused now
        await registry.check_provisioning_rate(
            resolved, per_claim=cfg.claim_rate_per_minute, per_tenant=cfg.tenant_rate_per_minute
        )
        enrolled = await registry.enrol(resolved, parse_enrol_request(payload))
    except IngressError as exc:
        return {"status": exc.http_status, **exc.to_json()}
    except Exception:  # a bug answers 500 rather than leaving the device waiting
        log.exception("mqtt.claim_failed", peer=conn.peer)
        return {"status": 500, "error": {"code": "INTERNAL", "message": "internal error"}}
    return {"status": 201 if enrolled.result.created else 200, **enrolled.to_json()}
