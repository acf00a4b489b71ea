"""Why a connection, a session or a message was refused or ended: one typed ``Cause``.

Adapters and the DTLS/MQTT cores report a ``Cause`` plus free-text detail for the
log; nothing parses text back. Each cause knows, from one table:

* ``label`` — its Prometheus label (the enum value);
* ``group`` — which metric family counts it (authentication failure, limit refusal,
  session end);
* ``counts_against_source`` — whether it is a failed authentication that the
  per-source throttle counts (a credential the resolver could not check because Redis
  is down is not the device's fault; a limit is not an authentication failure);
* its reply on each transport: MQTT 3.1.1 CONNACK return code, MQTT 5 reason code,
  CoAP response code, DTLS alert description, HTTP status.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class CauseGroup(Enum):
    #: A credential was refused or could not be checked (``corem_auth_failures_total``).
    AUTH = "auth"
    #: A limit refused the connection, session or message (``corem_limit_refusals_total``).
    LIMIT = "limit"
    #: A session ended for a reason that says nothing bad about the peer's credential.
    END = "end"


# MQTT 3.1.1 CONNACK return codes.
_CONNACK_PROTOCOL = 1
_CONNACK_UNAVAILABLE = 3
_CONNACK_BAD_CREDENTIALS = 4
_CONNACK_NOT_AUTHORIZED = 5

# DTLS/TLS alert descriptions (RFC 5246 §7.2, RFC 4279).
ALERT_CLOSE_NOTIFY = 0
ALERT_HANDSHAKE_FAILURE = 40
ALERT_BAD_CERTIFICATE = 42
ALERT_CERTIFICATE_EXPIRED = 45
ALERT_CERTIFICATE_UNKNOWN = 46
ALERT_UNKNOWN_CA = 48
ALERT_ACCESS_DENIED = 49
ALERT_DECODE_ERROR = 50
ALERT_DECRYPT_ERROR = 51
ALERT_INTERNAL_ERROR = 80
ALERT_UNKNOWN_PSK_IDENTITY = 115


@dataclass(frozen=True, slots=True)
class Reply:
    """What each transport answers for one cause."""

    group: CauseGroup
    counts_against_source: bool
    connack: int
    mqtt5: int
    coap: str
    dtls_alert: int
    http: int


def _auth(
    connack: int, mqtt5: int, alert: int, *, counts: bool = True, coap: str = "4.01"
) -> Reply:
    return Reply(CauseGroup.AUTH, counts, connack, mqtt5, coap, alert, 401)


def _limit(connack: int, mqtt5: int, coap: str, http: int) -> Reply:
    return Reply(CauseGroup.LIMIT, False, connack, mqtt5, coap, ALERT_CLOSE_NOTIFY, http)


def _end(mqtt5: int = 0x00, alert: int = ALERT_CLOSE_NOTIFY) -> Reply:
    return Reply(CauseGroup.END, False, _CONNACK_UNAVAILABLE, mqtt5, "5.03", alert, 503)


class Cause(StrEnum):
    # -- authentication --------------------------------------------------------------------
    #: The credential is not well formed (bad API-key format, undecodable PSK identity).
    MALFORMED = "malformed"
    #: No credential presented (no certificate, no password, no header).
    NO_CREDENTIAL = "no_credential"
    #: Not registered, or revoked.
    UNKNOWN_OR_REVOKED = "unknown_or_revoked"
    #: A rotated API key whose overlap window has ended.
    OVERLAP_ENDED = "overlap_ended"
    #: The certificate is outside its validity period.
    CERTIFICATE_EXPIRED = "certificate_expired"
    #: The certificate or its chain did not verify (signature, CA, purpose).
    BAD_CERTIFICATE = "bad_certificate"
    #: The chain does not end in a CA of the tenant the certificate is registered to.
    FOREIGN_CA = "foreign_ca"
    #: The stored credential record cannot be read (logged as an error).
    CORRUPT_RECORD = "corrupt_record"
    #: The device named itself as another device (MQTT client id).
    IDENTITY_MISMATCH = "identity_mismatch"
    #: The handshake failed on the key: wrong PSK (Finished did not verify).
    WRONG_KEY = "wrong_key"
    #: The handshake failed before any credential: no shared cipher suite, bad messages.
    HANDSHAKE_FAILED = "handshake_failed"
    #: The resolver could not check the credential: Redis unreachable (fail closed).
    UNAVAILABLE = "unavailable"
    # -- limits ----------------------------------------------------------------------------
    #: The source address is blocked after too many failed authentications.
    AUTH_THROTTLE = "auth_throttle"
    #: The tenant holds its maximum of live connections.
    TENANT_CONNECTIONS = "tenant_connections"
    #: The device is over its message rate.
    DEVICE_RATE = "device_rate"
    #: A packet, message or body over the transport's size limit.
    MAX_SIZE = "max_size"
    #: The DTLS listener holds its maximum of sessions.
    MAX_SESSIONS = "max_sessions"
    #: Too many DTLS handshakes from one source address per second.
    HANDSHAKE_RATE = "handshake_rate"
    #: Too many half-done DTLS handshakes (per source address or in total).
    PENDING_HANDSHAKES = "pending_handshakes"
    #: The client sent more unacknowledged QoS 2 messages than the window it was given
    #: (``mqtt.max_inflight``; MQTT 5 Receive Maximum).
    RECEIVE_MAXIMUM = "receive_maximum"
    # -- session ends ----------------------------------------------------------------------
    #: The peer closed (DISCONNECT, close_notify, TCP FIN).
    PEER_CLOSED = "peer_closed"
    #: No traffic from the peer within the idle timeout (or MQTT keep-alive).
    IDLE = "idle"
    #: The handshake did not finish in time.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    #: The client ended its own handshake with a fatal alert before any credential of it
    #: was judged (e.g. tinydtls refusing a PSK longer than it supports): nothing to count.
    PEER_ABORTED = "peer_aborted"
    #: A new handshake from the same address and port completed and took the address.
    REPLACED = "replaced"
    #: The same device connected again (MQTT session take-over).
    TAKEN_OVER = "taken_over"
    #: The node is shutting down.
    SHUTTING_DOWN = "broker_shutting_down"
    #: The credential was revoked (bus event).
    CREDENTIAL_REVOKED = "credential_revoked"
    #: The credential's rotation overlap ended.
    CREDENTIAL_EXPIRED = "credential_expired"
    #: After a bus gap the credential no longer resolves.
    NO_LONGER_VALID = "credential_no_longer_valid"
    #: After a bus gap the credential could not be checked (Redis unreachable).
    COULD_NOT_REVALIDATE = "could_not_re_validate"
    #: The tenant removed the CA the session's certificate chain ended in (or stopped
    #: allowing self-signed devices).
    TRUST_ANCHOR_REMOVED = "trust_anchor_removed"
    #: The peer broke the protocol (malformed packet, unexpected message).
    PROTOCOL_ERROR = "protocol_error"
    #: A PROXY protocol header refused: from an untrusted address, malformed, or missing
    #: where the listener requires one (the connection is closed before TLS/HTTP).
    PROXY_REFUSED = "proxy_refused"
    #: The device published or subscribed outside its own topics.
    ACL_VIOLATION = "acl_violation"
    #: An uplink could not be stored: the device is not acknowledged and must retry.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    #: Writing to the peer failed.
    TRANSPORT_ERROR = "transport_error"
    #: Closed by the broker for another operator/broker reason (e.g. LwM2M de-register).
    CLOSED_BY_SERVER = "closed_by_server"
    #: An operator disconnected the session (console / ``DELETE /api/v1/sessions/{id}``):
    #: the credential stays valid and the device may connect again.
    OPERATOR_DISCONNECT = "operator_disconnect"
    #: A queue-mode LwM2M device has its maximum of requests waiting (``lwm2m.queue_max``).
    LWM2M_QUEUE_FULL = "lwm2m_queue_full"
    #: Too many provisioning requests for one claim or tenant (``provisioning.*_per_minute``).
    PROVISIONING_RATE = "provisioning_rate"

    @property
    def label(self) -> str:
        """The metric label."""
        return self.value

    @property
    def reply(self) -> Reply:
        return _REPLIES[self]

    @property
    def group(self) -> CauseGroup:
        return _REPLIES[self].group

    @property
    def counts_against_source(self) -> bool:
        """A failed authentication the per-source throttle counts."""
        return _REPLIES[self].counts_against_source

    @property
    def connack(self) -> int:
        return _REPLIES[self].connack

    @property
    def mqtt5(self) -> int:
        return _REPLIES[self].mqtt5

    @property
    def coap(self) -> str:
        return _REPLIES[self].coap

    @property
    def dtls_alert(self) -> int:
        return _REPLIES[self].dtls_alert

    @property
    def http(self) -> int:
        return _REPLIES[self].http


# One row per cause: (group, counts against the source, CONNACK, MQTT 5, CoAP, DTLS, HTTP).
# MQTT 5 reason codes: 0x80 unspecified, 0x84 unsupported protocol version, 0x86 bad user
# name or password, 0x87 not authorized, 0x88 server unavailable, 0x89 server busy,
# 0x8B server shutting down, 0x8D keep alive timeout, 0x8E session taken over, 0x82
# protocol error, 0x95 packet too large, 0x93 receive maximum exceeded,
# 0x96 message rate too high, 0x97 quota exceeded, 0x98 administrative action (an
# operator revoked the credential or removed its CA: "revoked", not "network"),
# 0x9F connection rate exceeded.
_REPLIES: dict[Cause, Reply] = {
    Cause.MALFORMED: _auth(_CONNACK_BAD_CREDENTIALS, 0x86, ALERT_DECODE_ERROR, coap="4.00"),
    Cause.NO_CREDENTIAL: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_HANDSHAKE_FAILURE),
    Cause.UNKNOWN_OR_REVOKED: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_ACCESS_DENIED),
    Cause.OVERLAP_ENDED: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_ACCESS_DENIED),
    Cause.CERTIFICATE_EXPIRED: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_CERTIFICATE_EXPIRED),
    Cause.BAD_CERTIFICATE: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_BAD_CERTIFICATE),
    Cause.FOREIGN_CA: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_UNKNOWN_CA),
    Cause.CORRUPT_RECORD: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_ACCESS_DENIED),
    Cause.IDENTITY_MISMATCH: Reply(
        CauseGroup.AUTH, True, _CONNACK_NOT_AUTHORIZED, 0x87, "4.03", ALERT_ACCESS_DENIED, 403
    ),
    Cause.WRONG_KEY: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_DECRYPT_ERROR),
    Cause.HANDSHAKE_FAILED: _auth(_CONNACK_NOT_AUTHORIZED, 0x87, ALERT_HANDSHAKE_FAILURE),
    Cause.UNAVAILABLE: Reply(
        CauseGroup.AUTH, False, _CONNACK_UNAVAILABLE, 0x88, "5.03", ALERT_INTERNAL_ERROR, 503
    ),
    Cause.AUTH_THROTTLE: _limit(_CONNACK_NOT_AUTHORIZED, 0x9F, "4.29", 429),
    Cause.TENANT_CONNECTIONS: _limit(_CONNACK_UNAVAILABLE, 0x97, "5.03", 503),
    Cause.DEVICE_RATE: _limit(_CONNACK_UNAVAILABLE, 0x96, "4.29", 429),
    Cause.MAX_SIZE: _limit(_CONNACK_UNAVAILABLE, 0x95, "4.13", 413),
    Cause.MAX_SESSIONS: _limit(_CONNACK_UNAVAILABLE, 0x89, "5.03", 503),
    Cause.HANDSHAKE_RATE: _limit(_CONNACK_UNAVAILABLE, 0x9F, "5.03", 503),
    Cause.PENDING_HANDSHAKES: _limit(_CONNACK_UNAVAILABLE, 0x89, "5.03", 503),
    Cause.RECEIVE_MAXIMUM: _limit(_CONNACK_UNAVAILABLE, 0x93, "5.03", 503),
    Cause.PEER_CLOSED: _end(),
    Cause.IDLE: _end(0x8D),
    Cause.HANDSHAKE_TIMEOUT: _end(alert=ALERT_HANDSHAKE_FAILURE),
    Cause.PEER_ABORTED: _end(alert=ALERT_HANDSHAKE_FAILURE),
    Cause.REPLACED: _end(0x8E),
    Cause.TAKEN_OVER: _end(0x8E),
    Cause.SHUTTING_DOWN: _end(0x8B),
    Cause.CREDENTIAL_REVOKED: _end(0x98),
    Cause.CREDENTIAL_EXPIRED: _end(0x87),
    Cause.NO_LONGER_VALID: _end(0x98),
    Cause.COULD_NOT_REVALIDATE: _end(0x88),
    Cause.TRUST_ANCHOR_REMOVED: _end(0x98),
    Cause.PROTOCOL_ERROR: Reply(
        CauseGroup.END, False, _CONNACK_PROTOCOL, 0x82, "4.00", ALERT_DECODE_ERROR, 400
    ),
    Cause.PROXY_REFUSED: Reply(
        CauseGroup.END, False, _CONNACK_PROTOCOL, 0x82, "4.00", ALERT_HANDSHAKE_FAILURE, 400
    ),
    Cause.ACL_VIOLATION: _end(0x87),
    Cause.STORAGE_UNAVAILABLE: _end(0x88),
    Cause.TRANSPORT_ERROR: _end(0x80, ALERT_INTERNAL_ERROR),
    Cause.CLOSED_BY_SERVER: _end(),
    Cause.OPERATOR_DISCONNECT: _end(0x98),
    Cause.LWM2M_QUEUE_FULL: _limit(_CONNACK_UNAVAILABLE, 0x97, "4.29", 429),
    Cause.PROVISIONING_RATE: _limit(_CONNACK_UNAVAILABLE, 0x97, "4.29", 429),
}

AUTH_CAUSES = frozenset(c for c in Cause if c.group is CauseGroup.AUTH)
LIMIT_CAUSES = frozenset(c for c in Cause if c.group is CauseGroup.LIMIT)
END_CAUSES = frozenset(c for c in Cause if c.group is CauseGroup.END)
