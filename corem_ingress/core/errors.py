"""One error hierarchy; each error knows the reply every transport should send.

Messages are safe to show to the peer: they never echo secrets or raw input.
The ``reason`` is free text for logs only (e.g. "revoked" vs "unknown"), never for the
client; the ``cause`` (``core/causes.py``) is what code decides on (metric labels, whether
a failure counts against the source address).
"""

from __future__ import annotations

from typing import ClassVar

from corem_ingress.core.causes import Cause

# MQTT 3.1.1 CONNACK return codes.
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5


class IngressError(Exception):
    """Base of every error the broker reports to a peer or an operator."""

    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    coap_code: ClassVar[str] = "5.00"
    mqtt_connack: ClassVar[int] = CONNACK_SERVER_UNAVAILABLE
    #: CLI exit code: 2 for the caller's mistake, 1 for a server-side failure.
    cli_exit: ClassVar[int] = 1
    #: The cause when none is given (each refusal path names its own where it matters).
    default_cause: ClassVar[Cause] = Cause.CLOSED_BY_SERVER

    def __init__(
        self, message: str, *, reason: str | None = None, cause: Cause | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or message
        self.cause: Cause = cause or self.default_cause

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class Unauthenticated(IngressError):
    code = "UNAUTHENTICATED"
    http_status = 401
    coap_code = "4.01"
    mqtt_connack = CONNACK_NOT_AUTHORIZED
    cli_exit = 2
    default_cause = Cause.UNKNOWN_OR_REVOKED

    def __init__(
        self,
        message: str = "invalid or missing credential",
        *,
        reason: str | None = None,
        cause: Cause | None = None,
    ) -> None:
        super().__init__(message, reason=reason, cause=cause)


class PermissionDenied(IngressError):
    code = "PERMISSION_DENIED"
    http_status = 403
    coap_code = "4.03"
    mqtt_connack = CONNACK_NOT_AUTHORIZED
    cli_exit = 2
    default_cause = Cause.IDENTITY_MISMATCH


class NotFound(IngressError):
    code = "NOT_FOUND"
    http_status = 404
    coap_code = "4.04"
    mqtt_connack = CONNACK_NOT_AUTHORIZED
    cli_exit = 2


class AlreadyExists(IngressError):
    code = "ALREADY_EXISTS"
    http_status = 409
    coap_code = "4.09"
    mqtt_connack = CONNACK_NOT_AUTHORIZED
    cli_exit = 2


class InvalidArgument(IngressError):
    code = "INVALID_ARGUMENT"
    http_status = 400
    coap_code = "4.00"
    mqtt_connack = CONNACK_BAD_USERNAME_OR_PASSWORD
    cli_exit = 2
    default_cause = Cause.MALFORMED


class FailedPrecondition(IngressError):
    code = "FAILED_PRECONDITION"
    http_status = 412
    coap_code = "4.12"
    mqtt_connack = CONNACK_NOT_AUTHORIZED
    cli_exit = 2


class ResourceExhausted(IngressError):
    """A limit refused the request (per-device message rate, per-source auth throttle)."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 429
    coap_code = "4.29"
    mqtt_connack = CONNACK_SERVER_UNAVAILABLE
    cli_exit = 1
    default_cause = Cause.DEVICE_RATE

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int,
        reason: str | None = None,
        cause: Cause | None = None,
    ) -> None:
        super().__init__(message, reason=reason, cause=cause)
        #: Sent as ``Retry-After`` (HTTP) or Max-Age (CoAP 4.29).
        self.retry_after_s = max(1, retry_after_s)


class Unavailable(IngressError):
    code = "UNAVAILABLE"
    http_status = 503
    coap_code = "5.03"
    mqtt_connack = CONNACK_SERVER_UNAVAILABLE
    cli_exit = 1
    default_cause = Cause.UNAVAILABLE

    def __init__(
        self,
        message: str = "service temporarily unavailable",
        *,
        reason: str | None = None,
        cause: Cause | None = None,
    ) -> None:
        super().__init__(message, reason=reason, cause=cause)


class DeviceFailed(IngressError):
    """A device answered an operator's request with a server error (5.xx), an unexpected
    code or a body that cannot be put together: the device is at fault, not the broker
    (HTTP 502, not the retryable 503). ``device_code`` is the device's CoAP code."""

    code = "DEVICE_ERROR"
    http_status = 502
    coap_code = "5.02"
    mqtt_connack = CONNACK_SERVER_UNAVAILABLE
    cli_exit = 1

    def __init__(
        self,
        message: str,
        *,
        device_code: str | None = None,
        reason: str | None = None,
        cause: Cause | None = None,
    ) -> None:
        super().__init__(message, reason=reason, cause=cause)
        self.device_code = device_code

    def to_json(self) -> dict[str, dict[str, str]]:
        out = super().to_json()
        if self.device_code is not None:
            out["error"]["coap_code"] = self.device_code
        return out


ALL_ERRORS: tuple[type[IngressError], ...] = (
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeviceFailed,
)


def coap_max_age(exc: IngressError, unavailable_max_age_s: int) -> int | None:
    """The Max-Age of a CoAP error reply: when to try again. A rate limit's own wait (4.29),
    else ``unavailable_max_age_s`` with 5.03 (the uplink was not stored: send it again
    later), else none."""
    retry_after = getattr(exc, "retry_after_s", None)
    if isinstance(retry_after, int):
        return retry_after
    if exc.coap_code == "5.03":
        return unavailable_max_age_s
    return None
