"""The OpenAPI 3.1 document of both HTTP APIs, built here and served as is.

``docs/openapi.json`` is this document rendered by ``render()``; a test checks
that the file, the served document and the routes agree. Regenerate it with::

    .venv/bin/python -m corem_ingress.adapters.http openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any

from aiohttp import web

from corem_ingress.lwm2m.model import ValueType
from corem_ingress.lwm2m.operations import Operation

OPENAPI_PATH = "/api/v1/openapi.json"

Json = dict[str, Any]

_UUID = {"type": "string", "format": "uuid"}
_NUM = {"type": "number"}
_STR = {"type": "string"}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> Json:
    return {"$ref": f"#/components/responses/{name}"}


def _json_content(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Json) -> Json:
    return {"description": description, "content": _json_content(schema)}


def _obj(required: list[str], props: Json, *, extra: bool = False) -> Json:
    out: Json = {"type": "object", "required": required, "properties": props}
    if not extra:
        out["additionalProperties"] = False
    return out


def _errors(*statuses: int) -> Json:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        412: "PreconditionFailed",
        413: "PayloadTooLarge",
        415: "UnsupportedMediaType",
        429: "TooManyRequests",
        502: "DeviceError",
        503: "Unavailable",
    }
    return {str(s): _resp(names[s]) for s in statuses}


def _path_param(name: str, description: str, schema: Json) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _query_param(name: str, description: str, schema: Json) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_DEVICE_ID = _path_param("device_id", "The platform-assigned device id (UUID).", _UUID)
_KEY_ID = _path_param(
    "key_id",
    "An API key's id (`key_` + 16 hex).",
    {"type": "string", "pattern": "^key_[0-9a-f]{16}$"},
)
_FINGERPRINT = _path_param(
    "fingerprint",
    "SHA-256 of the certificate's DER bytes, lower-case hex.",
    {"type": "string", "pattern": "^[0-9a-f]{64}$"},
)
_CA_FINGERPRINT = _path_param(
    "ca_fingerprint",
    "SHA-256 of the CA certificate's DER bytes, lower-case hex.",
    {"type": "string", "pattern": "^[0-9a-f]{64}$"},
)
_LIMIT = _query_param(
    "limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
)
_CURSOR = _query_param(
    "cursor", "`next_cursor` of the previous page.", {"type": "string", "pattern": "^[0-9]{1,12}$"}
)
_ADMIN: list[Json] = [{"operatorBearer": []}]
_ADMIN_TAG = ["admin"]
_ADMIN_ERRORS = (400, 401, 404, 429, 503)
_LWM2M_OPERATIONS = {
    "read": "Read a resource, instance or object (the device's values, decoded).",
    "write": "Write values (PUT replace, or POST partial update with replace=false).",
    "execute": "Execute a resource (optional arguments).",
    "observe": "Observe a path: the first value is returned, later notifications are uplinks.",
    "cancel-observe": "Cancel an observation (the device answers with the current value).",
    "discover": "Discover the attributes and resources under a path (links, with the "
    "attributes the device reports and each target's name in the object model).",
    "write-attributes": "Write notification attributes (pmin, pmax, gt, lt, st, epmin, epmax) "
    "of a path; `clear` removes attributes. Checked before the device is asked: pmin <= pmax, "
    "epmin <= epmax, gt/lt/st only on a numeric resource, lt + 2*st < gt.",
    "create": "Create object instance(s): `path` is the object (/31024), `values` name the "
    "new instances' resources (/31024/20/1); checked against the object model (type, range).",
    "delete": "Delete an object instance (`path` /object/instance).",
    "read-composite": "Read-Composite (LwM2M 1.1): the values under every one of `paths` in "
    "one answer (SenML JSON or CBOR: `accept` 110 or 112).",
    "write-composite": "Write-Composite (LwM2M 1.1): `values` anywhere on the device in one "
    "request (SenML), each checked against the object model as a Write.",
    "observe-composite": "Observe-Composite (LwM2M 1.1): one observation of all of `paths`; "
    "the first values are returned, each notification (all the values) becomes an uplink.",
    "cancel-observe-composite": "Cancel an Observe-Composite (the same `paths`).",
}


def _schemas() -> Json:
    error = _obj(
        ["error"],
        {
            "error": _obj(
                ["code", "message"],
                {
                    "code": {
                        "type": "string",
                        "description": "UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, "
                        "ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION, "
                        "PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, METHOD_NOT_ALLOWED, "
                        "RESOURCE_EXHAUSTED, UNAVAILABLE, DEVICE_ERROR, INTERNAL",
                    },
                    "message": {"type": "string"},
                    "coap_code": {
                        "type": "string",
                        "pattern": "^[245]\\.[0-9]{2}$",
                        "description": "DEVICE_ERROR only: the CoAP code the device answered "
                        "(e.g. 5.00).",
                    },
                },
            )
        },
    )
    kind = {"type": "string", "enum": ["api_key", "psk", "x509"]}
    device = _obj(
        [
            "device_id",
            "tenant_id",
            "hardware_id",
            "credential_kind",
            "status",
            "created_at",
            "updated_at",
        ],
        {
            "device_id": _UUID,
            "tenant_id": _STR,
            "hardware_id": _STR,
            "credential_kind": kind,
            "status": {"type": "string", "enum": ["active", "disabled"]},
            "created_at": _NUM,
            "updated_at": _NUM,
        },
    )
    credential = _obj(
        ["credential_id", "kind", "device_id", "status", "created_at"],
        {
            "credential_id": _STR,
            "kind": kind,
            "device_id": _UUID,
            "status": {"type": "string", "enum": ["active", "rotated", "expired", "revoked"]},
            "created_at": _NUM,
            "revoked_at": _NUM,
            "expires_at": {"description": "End of a rotated API key's overlap window.", **_NUM},
            "key_id": _STR,
            "psk_identity": _STR,
            "fingerprint": _STR,
            "subject": _STR,
            "issuer": _STR,
            "serial": _STR,
            "key_type": _STR,
            "not_before": _NUM,
            "not_after": _NUM,
            "self_signed": {"type": "boolean"},
        },
    )
    device_detail = {
        "allOf": [
            {**device, "additionalProperties": True},
            {
                "type": "object",
                "required": ["credentials"],
                "properties": {"credentials": {"type": "array", "items": _ref("Credential")}},
            },
        ],
        "unevaluatedProperties": False,
    }
    issued_key = _obj(
        ["key_id", "api_key", "device_id"],
        {
            "key_id": _STR,
            "api_key": {
                "type": "string",
                "pattern": "^sk_live_[A-Za-z0-9_-]{43}$",
                "description": "The raw key: returned once, never again.",
            },
            "device_id": _UUID,
            "replaces": {"description": "Rotate: the key this one replaces.", **_STR},
            "old_key_expires_at": {
                "description": "Rotate: when the replaced key stops (null: it stopped now).",
                "type": ["number", "null"],
            },
        },
    )
    proof = {
        "description": "Proof of possession of the certificate's private key, over a "
        "challenge from POST /api/v1/challenges (single use, expires): a signature of the "
        "challenge's UTF-8 bytes (ECDSA or RSA PKCS#1 v1.5 with SHA-256, or Ed25519; base64), "
        "or a PKCS#10 CSR made with the key whose challengePassword is the challenge.",
        "oneOf": [
            _obj(
                ["challenge", "signature"],
                {
                    "challenge": {"type": "string", "maxLength": 256},
                    "signature": {
                        "type": "string",
                        "maxLength": 2048,
                        "description": "base64 of the signature",
                    },
                },
            ),
            _obj(["csr_pem"], {"csr_pem": {"type": "string", "maxLength": 16384}}),
        ],
    }
    ca = _obj(
        [
            "fingerprint",
            "subject",
            "issuer",
            "serial",
            "not_before",
            "not_after",
            "key_type",
            "path_length",
            "self_signed",
            "require_device_proof",
            "added_at",
            "expired",
        ],
        {
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "subject": _STR,
            "issuer": _STR,
            "serial": _STR,
            "not_before": _NUM,
            "not_after": _NUM,
            "key_type": _STR,
            "path_length": {
                "type": ["integer", "null"],
                "description": "basicConstraints pathLenConstraint (null: none).",
            },
            "self_signed": {
                "type": "boolean",
                "description": "A root rather than an intermediate.",
            },
            "require_device_proof": {
                "type": "boolean",
                "description": "Device certificates under this CA need proof of possession.",
            },
            "added_at": _NUM,
            "expired": {"type": "boolean"},
        },
    )
    return {
        "Error": error,
        "Proof": proof,
        "Ca": ca,
        "CaList": _obj(
            ["cas", "next_cursor"],
            {
                "cas": {"type": "array", "items": _ref("Ca")},
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "AddCaRequest": _obj(
            ["cert_pem", "proof"],
            {
                "cert_pem": {"description": "The CA certificate (PEM, exactly one).", **_STR},
                "proof": {**_ref("Proof"), "description": "Made with the CA's key."},
                "require_device_proof": {
                    "type": "boolean",
                    "default": False,
                    "description": "Ask proof of possession for every device certificate "
                    "under this CA (for a CA that other tenants may trust too).",
                },
            },
        ),
        "Challenge": _obj(
            ["challenge", "expires_at"],
            {
                "challenge": {
                    "type": "string",
                    "pattern": "^corem-pop-v1:[a-z0-9][a-z0-9_-]{0,62}:[A-Za-z0-9_-]{32}$",
                },
                "expires_at": _NUM,
            },
        ),
        "UplinkRequest": _obj(
            ["kind", "payload"],
            {
                "kind": {"type": "string", "enum": ["telemetry", "event", "state"]},
                "payload": {"description": "Any JSON value (a string, a number, an object...)."},
            },
        ),
        "UplinkAccepted": _obj(
            ["message_id", "received_at"],
            {"message_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "received_at": _NUM},
        ),
        "ProvisionRequest": _obj(
            ["hardware_id", "credential_kind"],
            {
                "hardware_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@+=-]{1,128}$"},
                "credential_kind": kind,
                "cert_pem": {"description": "x509 only: the device certificate (PEM).", **_STR},
                "psk_identity": {
                    "description": "psk only: identity to assign; must start with the "
                    "tenant id and a colon (`acme:`).",
                    **_STR,
                },
                "psk_hex": {
                    "description": "psk only: key to assign, hex (32-64 bytes).",
                    "type": "string",
                    "pattern": "^([0-9a-fA-F]{2}){32,64}$",
                },
                "proof": {
                    **_ref("Proof"),
                    "description": "x509 only: proof of possession of the certificate's key "
                    "(required for a self-signed certificate).",
                },
            },
        ),
        "ProvisionResult": _obj(
            ["device_id", "tenant_id", "hardware_id", "credential_kind", "created"],
            {
                "device_id": _UUID,
                "tenant_id": _STR,
                "hardware_id": _STR,
                "credential_kind": kind,
                "created": {"type": "boolean"},
                "api_key": {"description": "Only when created with api_key: once.", **_STR},
                "key_id": _STR,
                "psk_identity": _STR,
                "psk": {"description": "Only when created with psk: hex, once.", **_STR},
                "fingerprint": _STR,
            },
        ),
        "Device": device,
        "DeviceDetail": device_detail,
        "DeviceList": _obj(
            ["devices", "next_cursor"],
            {
                "devices": {"type": "array", "items": _ref("Device")},
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "Credential": credential,
        "CertList": _obj(
            ["certs", "next_cursor"],
            {
                "certs": {"type": "array", "items": _ref("Credential")},
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "IssuedApiKey": issued_key,
        "RotateApiKeyRequest": _obj(
            [],
            {
                "overlap_s": {
                    "type": "number",
                    "minimum": 0,
                    "description": "Seconds the old key keeps working (default and maximum "
                    "from credentials.api_key_overlap_s / _max_s; 0: it stops now).",
                }
            },
        ),
        "RotatePskRequest": _obj(
            [],
            {
                "psk_identity": {
                    "description": "Identity to assign; must start with the tenant id and a "
                    "colon (`acme:`).",
                    **_STR,
                },
                "psk_hex": {"type": "string", "pattern": "^([0-9a-fA-F]{2}){32,64}$"},
            },
        ),
        "IssuedPsk": _obj(
            ["device_id", "credential_id", "psk_identity", "psk"],
            {"device_id": _UUID, "credential_id": _STR, "psk_identity": _STR, "psk": _STR},
        ),
        "CertJson": _obj(
            ["pem"],
            {
                "pem": _STR,
                "proof": {
                    **_ref("Proof"),
                    "description": "Proof of possession of the certificate's key (required "
                    "for a self-signed certificate).",
                },
            },
        ),
        "DownlinkRequest": _obj(
            ["kind", "payload"],
            {
                "kind": {
                    "type": "string",
                    "pattern": "^[a-z0-9_-]{1,64}$",
                    "description": "Topic level / URI path segment, e.g. config, command.",
                },
                "payload": {
                    "description": "Any JSON value: a string goes out as UTF-8 text, anything "
                    "else as JSON."
                },
                "qos": {"type": "integer", "enum": [0, 1], "default": 1},
                "expiry_s": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 604800,
                    "description": "Message expiry: not delivered after this many seconds "
                    "(MQTT 5 devices get the time left as the Message Expiry Interval).",
                },
            },
        ),
        "DownlinkAccepted": _obj(
            ["state", "message_id", "stream_id", "device_id"],
            {
                "state": {
                    "type": "string",
                    "enum": ["delivered", "queued", "dropped"],
                    "description": "delivered: written to the device's live session (QoS 1 "
                    "to a persistent session stays queued until its PUBACK / CoAP ACK); "
                    "queued: kept in the device's queue for its next connection; dropped: "
                    "not kept (see reason).",
                },
                "reason": {
                    "type": "string",
                    "enum": [
                        "no_session",
                        "qos0_offline",
                        "not_subscribed",
                        "not_delivered",
                        "expired",
                    ],
                    "description": "Why it was dropped (only when state is dropped).",
                },
                "queue_position": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Its place in the device's queue (1: next); only when queued.",
                },
                "dropped_oldest": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    "description": "Older queued downlinks dropped to make room for this "
                    "one (the queue was full: downlinks.queue_max).",
                },
                "message_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "stream_id": {
                    **_STR,
                    "description": "Entry id in the tenant's downlink stream.",
                },
                "device_id": _UUID,
            },
        ),
        "Lwm2mRegistration": _obj(
            [
                "registration_id",
                "endpoint",
                "tenant_id",
                "device_id",
                "credential_id",
                "security",
                "version",
                "lifetime_s",
                "binding",
                "queue_mode",
                "objects",
                "node_id",
                "registered_at",
                "expires_at",
            ],
            {
                "registration_id": _STR,
                "endpoint": {**_STR, "description": "The LwM2M endpoint client name."},
                "tenant_id": _STR,
                "device_id": _UUID,
                "credential_id": _STR,
                "security": {"type": "string", "enum": ["psk", "x509", "nosec"]},
                "version": {
                    "type": "string",
                    "enum": ["1.0", "1.1", "1.2"],
                    "description": "1.2 clients are served as 1.1-compatible.",
                },
                "lifetime_s": {"type": "integer"},
                "binding": _STR,
                "queue_mode": {"type": "boolean"},
                "sms": {"type": ["string", "null"]},
                "objects": _obj(
                    ["root", "content_formats", "objects"],
                    {
                        "root": _STR,
                        "content_formats": {"type": "array", "items": {"type": "integer"}},
                        "objects": {
                            "type": "array",
                            "items": _obj(["path"], {"path": _STR, "ver": _STR}),
                        },
                    },
                ),
                "node_id": {**_STR, "description": "The node holding the device's DTLS session."},
                "session_id": _STR,
                "registered_at": _NUM,
                "updated_at": _NUM,
                "expires_at": _NUM,
                "reachable": {
                    "type": "boolean",
                    "description": "Whether the DTLS session the registration is bound to (the "
                    "one that sent Register or the last Update) is still open. False: requests "
                    "get 503 until the device updates or registers over a new session.",
                },
            },
        ),
        "Lwm2mRecord": _obj(
            ["path", "type", "value"],
            {
                "path": _STR,
                "type": {
                    "type": "string",
                    "enum": [t.value for t in ValueType if t is not ValueType.NONE],
                },
                "value": {"type": ["string", "number", "boolean"]},
                "time": {"type": ["number", "null"]},
            },
        ),
        "Lwm2mRequest": _obj(
            [],
            {
                "paths": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 64,
                    "items": {"type": "string", "pattern": "^(/[0-9]{1,5}){1,4}$"},
                    "description": "Read-/Observe-Composite and its Cancel: the paths "
                    "(instead of `path`).",
                },
                "path": {
                    "type": "string",
                    "pattern": "^(/[0-9]{1,5}){1,4}$",
                    "description": "LwM2M path: /object[/instance[/resource[/instance]]]. "
                    "Required, except for the composite operations.",
                },
                "values": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 256,
                    "items": _obj(
                        ["path", "value"],
                        {
                            "path": _STR,
                            "value": {"type": ["string", "number", "boolean"]},
                            "type": _STR,
                            "time": _NUM,
                        },
                    ),
                    "description": "Write / Create: the values (type may be left out for resources "
                    "of a known object: objects 0-7, 3303 and lwm2m.models_dir; opaque as "
                    "base64). Checked against the object model: writable, type, range.",
                },
                "args": {**_STR, "description": "Execute arguments, e.g. 0='x',1."},
                "accept": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 65535,
                    "description": "Read/Observe: the content format to ask for (default: "
                    "the richest the client announced at registration). One this server "
                    "cannot decode (e.g. LwM2M CBOR 11544) is refused with 400 before the "
                    "device is asked.",
                },
                "replace": {
                    "type": "boolean",
                    "description": "Write: true (PUT, replace) or false (POST, partial update).",
                },
                **{
                    name: {
                        "type": "integer"
                        if name in ("pmin", "pmax", "epmin", "epmax")
                        else "number",
                        "description": f"Write-Attributes: {text}.",
                        **({"minimum": 0} if name not in ("gt", "lt") else {}),
                    }
                    for name, text in (
                        ("pmin", "minimum period (s)"),
                        ("pmax", "maximum period (s)"),
                        ("gt", "greater than (numeric resource)"),
                        ("lt", "less than (numeric resource)"),
                        ("st", "step (numeric resource)"),
                        ("epmin", "minimum evaluation period (s)"),
                        ("epmax", "maximum evaluation period (s)"),
                    )
                },
                "clear": {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "enum": ["pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"],
                    },
                    "description": "Write-Attributes: attributes to remove.",
                },
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 60,
                    "description": "How long to wait for the device (default "
                    "lwm2m.request_timeout_s).",
                },
                "deadline_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Queue mode: how long the request may wait for a sleeping "
                    "device (default lwm2m.queue_deadline_s, at most "
                    "lwm2m.queue_max_deadline_s).",
                },
            },
        ),
        "FirmwareImage": _obj(
            ["image_id", "name", "version", "size", "sha256", "created_at"],
            {
                "image_id": {"type": "string", "pattern": "^fw_[0-9a-f]{24}$"},
                "name": _STR,
                "version": _STR,
                "size": {"type": "integer"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "created_at": _NUM,
            },
        ),
        "FirmwareImageList": _obj(
            ["images"], {"images": {"type": "array", "items": _ref("FirmwareImage")}}
        ),
        "FirmwareUpdateRequest": _obj(
            ["device_ids"],
            {
                "device_ids": {"type": "array", "minItems": 1, "maxItems": 1000, "items": _UUID},
                "method": {
                    "type": "string",
                    "enum": ["pull", "push"],
                    "description": "pull (default): the device fetches the image with Block2 "
                    "from a per-job coaps URI on the DTLS port; push: the server writes "
                    "/5/0/0 with Block1.",
                },
            },
        ),
        "FirmwareJob": _obj(
            ["job_id", "campaign_id", "device_id", "image_id", "method", "status"],
            {
                "job_id": _STR,
                "campaign_id": _STR,
                "device_id": _UUID,
                "image_id": _STR,
                "method": {"type": "string", "enum": ["pull", "push"]},
                "status": {
                    "type": "string",
                    "enum": [
                        "pending",
                        "downloading",
                        "downloaded",
                        "updating",
                        "succeeded",
                        "failed",
                    ],
                },
                "updated_at": _NUM,
                "device_state": {"type": ["integer", "null"], "description": "/5/0/3"},
                "device_result": {"type": ["integer", "null"], "description": "/5/0/5"},
                "error": {"type": ["string", "null"]},
            },
        ),
        "FirmwareCampaign": _obj(
            ["campaign_id", "image_id", "method", "created_at", "counts", "jobs"],
            {
                "campaign_id": {"type": "string", "pattern": "^fc_[0-9a-f]{24}$"},
                "image_id": _STR,
                "method": _STR,
                "created_at": _NUM,
                "counts": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "Jobs per status (every status named).",
                },
                "jobs": {"type": "array", "items": _ref("FirmwareJob")},
            },
        ),
        "Lwm2mQueuedRequest": _obj(
            ["request_id", "device_id", "operation", "path", "status", "queued_at", "deadline"],
            {
                "request_id": {"type": "string", "pattern": "^rq_[0-9a-f]{24}$"},
                "device_id": _UUID,
                "registration_id": _STR,
                "operation": _STR,
                "path": _STR,
                "status": {
                    "type": "string",
                    "enum": ["queued", "sent", "done", "failed", "expired"],
                },
                "queued_at": _NUM,
                "deadline": _NUM,
                "finished_at": {"type": ["number", "null"]},
                "waiting": {
                    "type": "integer",
                    "description": "Requests now waiting for the device (202 only).",
                },
                "result": {**_ref("Lwm2mResult"), "description": "The answer (status done)."},
                "error": {"type": "object", "description": "{code, message} (failed, expired)."},
            },
        ),
        "Lwm2mResult": _obj(
            ["device_id", "registration_id", "operation", "path", "code"],
            {
                "device_id": _UUID,
                "registration_id": _STR,
                "operation": {
                    "type": "string",
                    "enum": [op.value for op in Operation],
                },
                "path": _STR,
                "code": {**_STR, "description": "The device's CoAP response code (2.xx)."},
                "records": {"type": "array", "items": _ref("Lwm2mRecord")},
                "instances": {
                    "type": "array",
                    "items": _STR,
                    "description": "Create: the instances created (/31024/20).",
                },
                "links": {
                    "type": "array",
                    "items": _obj(
                        ["target", "params"],
                        {
                            "target": _STR,
                            "params": {
                                "type": "object",
                                "description": "Link parameters, with the attributes the "
                                "device reports (pmin, pmax, gt, lt, st, epmin, epmax, dim, "
                                "ver).",
                            },
                            "name": {
                                "type": ["string", "null"],
                                "description": "The object's or resource's name in the "
                                "object model (null when unknown).",
                            },
                        },
                    ),
                },
            },
        ),
        "Lwm2mResourceModel": _obj(
            ["id", "name", "operations", "multiple", "mandatory", "type"],
            {
                "id": {"type": "integer"},
                "name": _STR,
                "operations": {"type": "string", "enum": ["", "R", "W", "E", "RW"]},
                "multiple": {"type": "boolean"},
                "mandatory": {"type": "boolean"},
                "type": {
                    "type": "string",
                    "enum": [t.value for t in ValueType],
                },
                "range": {
                    **_STR,
                    "description": "RangeEnumeration (e.g. 0..100; for text and opaque: "
                    "the length in bytes); writes outside it are refused with 400.",
                },
                "units": _STR,
                "description": _STR,
            },
        ),
        "Lwm2mObjectModel": _obj(
            ["id", "name", "version", "multiple", "mandatory"],
            {
                "id": {"type": "integer"},
                "name": _STR,
                "version": _STR,
                "lwm2m_version": _STR,
                "urn": _STR,
                "multiple": {"type": "boolean"},
                "mandatory": {"type": "boolean"},
                "description": _STR,
                "resources": {"type": "array", "items": _ref("Lwm2mResourceModel")},
            },
        ),
    }


def _provisioning_schemas() -> Json:
    """Provisioning by claim (docs/provisioning.md)."""
    two_kinds = {"type": "string", "enum": ["api_key", "psk"]}
    claim = _obj(
        [
            "claim_id",
            "tenant_id",
            "kind",
            "credential_kind",
            "max_uses",
            "uses",
            "expires_at",
            "status",
            "created_at",
        ],
        {
            "claim_id": {"type": "string", "pattern": "^clm_[0-9a-f]{16}$"},
            "tenant_id": _STR,
            "kind": {**two_kinds, "description": "How devices present the claim."},
            "credential_kind": {**two_kinds, "description": "What the claim issues."},
            "max_uses": {"type": "integer"},
            "uses": {"type": "integer", "description": "Devices enrolled (re-issues not)."},
            "expires_at": {"type": ["number", "null"]},
            "status": {"type": "string", "enum": ["active", "revoked", "expired", "exhausted"]},
            "created_at": _NUM,
            "revoked_at": _NUM,
            "psk_identity": {**_STR, "description": "A psk claim's PSK identity."},
            "claim_key": {"description": "An api_key claim's key (ck_live_…): once.", **_STR},
            "psk": {"description": "A psk claim's key, hex: once.", **_STR},
        },
    )
    return {
        "Claim": claim,
        "ClaimList": _obj(
            ["claims", "next_cursor"],
            {
                "claims": {"type": "array", "items": _ref("Claim")},
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "CreateClaimRequest": _obj(
            ["max_uses"],
            {
                "kind": {**two_kinds, "default": "api_key"},
                "credential_kind": {**two_kinds, "default": "api_key"},
                "max_uses": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
                "expires_at": {**_NUM, "description": "Epoch seconds (default: never)."},
                "expires_in_s": {**_NUM, "description": "Or: seconds from now."},
                "psk_hex": {
                    **_STR,
                    "description": "A psk claim's key, assigned (hex; default: generated).",
                },
            },
        ),
        "JitpTemplate": _obj(
            [],
            {
                "hardware_id_from": {
                    "type": "string",
                    "enum": ["subject_cn", "san_uri", "san_dns", "serial"],
                    "default": "subject_cn",
                },
                "san_prefix": {
                    **_STR,
                    "description": "SAN entries must start with it; it is cut off.",
                },
                "metadata": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Written on every device this CA provisions.",
                },
                "allow_certificate_rotation": {"type": "boolean", "default": False},
            },
        ),
        "AutoProvision": _obj(
            ["ca_fingerprint", "auto_provision", "template"],
            {
                "ca_fingerprint": _STR,
                "auto_provision": {"type": "boolean"},
                "template": {"oneOf": [_ref("JitpTemplate"), {"type": "null"}]},
            },
        ),
        "ClaimProvisionRequest": _obj(
            ["hardware_id"],
            {"hardware_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@+=-]{1,128}$"}},
        ),
        "ClaimProvisionResult": _obj(
            ["device_id", "tenant_id", "hardware_id", "credential_kind", "created", "reissued"],
            {
                "device_id": _UUID,
                "tenant_id": _STR,
                "hardware_id": _STR,
                "credential_kind": two_kinds,
                "created": {"type": "boolean"},
                "reissued": {
                    "type": "boolean",
                    "description": "A retry before first use: the previous credential is "
                    "revoked, this one replaces it.",
                },
                "api_key": {"description": "The device's own key: once.", **_STR},
                "key_id": _STR,
                "psk_identity": _STR,
                "psk": {"description": "The device's own PSK, hex: once.", **_STR},
            },
        ),
    }


def _provisioning_paths() -> Json:
    admin = {"tags": _ADMIN_TAG, "security": _ADMIN}
    claim_id = _path_param(
        "claim_id", "A claim's id (`clm_` + 16 hex).", {"type": "string", "pattern": "^clm_"}
    )
    return {
        "/api/v1/provisioning/claim": {
            "post": {
                "operationId": "ProvisionByClaim",
                "tags": ["device"],
                "summary": "A device enrols itself: its claim key in, its own credential out.",
                "description": "The claim key (ck_live_…) as Authorization: Bearer or X-API-Key. "
                "201: a new device. 200: a retry before the credential was first used re-issued "
                "it (the previous one is revoked). 409: the credential is already in use, or "
                "the hardware_id belongs to a device this claim did not enrol. 403: the claim "
                "has no uses left. 429: the claim's or tenant's provisioning rate.",
                "security": [{"deviceBearer": []}, {"deviceApiKey": []}],
                "requestBody": _json_body(_ref("ClaimProvisionRequest")),
                "responses": {
                    "201": _ok(
                        "Enrolled; the secret is in this answer only.", _ref("ClaimProvisionResult")
                    ),
                    "200": _ok(
                        "Re-issued; the secret is in this answer only.",
                        _ref("ClaimProvisionResult"),
                    ),
                    **_errors(400, 401, 403, 409, 413, 429, 503),
                },
            }
        },
        "/api/v1/cas/{ca_fingerprint}/auto-provision": {
            "get": {
                **admin,
                "operationId": "GetCaAutoProvision",
                "summary": "Whether this CA provisions devices just in time, and its template.",
                "parameters": [_CA_FINGERPRINT],
                "responses": {
                    "200": _ok("The CA's setting.", _ref("AutoProvision")),
                    **_errors(401, 404, 429, 503),
                },
            },
            "put": {
                **admin,
                "operationId": "SetCaAutoProvision",
                "summary": "Provision devices just in time: an unregistered certificate this "
                "CA issued, presented over MQTT or DTLS, creates (or finds) the device by the "
                "hardware_id the template takes from it and registers the certificate.",
                "parameters": [_CA_FINGERPRINT],
                "requestBody": _json_body(_ref("JitpTemplate")),
                "responses": {
                    "200": _ok("On, with this template.", _ref("AutoProvision")),
                    **_errors(400, 401, 404, 409, 413, 429, 503),
                },
            },
            "delete": {
                **admin,
                "operationId": "DisableCaAutoProvision",
                "summary": "Stop provisioning devices just in time with this CA.",
                "parameters": [_CA_FINGERPRINT],
                "responses": {
                    "200": _ok("Off.", _ref("AutoProvision")),
                    **_errors(401, 404, 429, 503),
                },
            },
        },
        "/api/v1/claims": {
            "post": {
                **admin,
                "operationId": "CreateClaim",
                "summary": "Create a claim credential for a batch of devices.",
                "requestBody": _json_body(_ref("CreateClaimRequest")),
                "responses": {
                    "201": _ok("Created; its secret is in this answer only.", _ref("Claim")),
                    **_errors(400, 401, 412, 413, 429, 503),
                },
            },
            "get": {
                **admin,
                "operationId": "ListClaims",
                "summary": "This tenant's claims (uses, status; never a secret).",
                "parameters": [_LIMIT, _CURSOR],
                "responses": {
                    "200": _ok("A page of claims.", _ref("ClaimList")),
                    **_errors(400, 401, 429, 503),
                },
            },
        },
        "/api/v1/claims/{claim_id}": {
            "get": {
                **admin,
                "operationId": "GetClaim",
                "summary": "One claim.",
                "parameters": [claim_id],
                "responses": {
                    "200": _ok("The claim.", _ref("Claim")),
                    **_errors(401, 404, 429, 503),
                },
            },
            "delete": {
                **admin,
                "operationId": "RevokeClaim",
                "summary": "Revoke a claim now (devices it enrolled keep their credentials).",
                "parameters": [claim_id],
                "responses": {
                    "200": _ok("The revoked claim.", _ref("Claim")),
                    **_errors(401, 404, 429, 503),
                },
            },
        },
    }


def _responses() -> Json:
    def err(description: str, headers: Json | None = None) -> Json:
        out: Json = {"description": description, "content": _json_content(_ref("Error"))}
        if headers:
            out["headers"] = headers
        return out

    return {
        "BadRequest": err("Malformed request: bad JSON, unknown field, wrong type or value."),
        "Unauthorized": err(
            "Missing, malformed, unknown, revoked or expired credential (not said which).",
            {"WWW-Authenticate": {"schema": {"type": "string", "pattern": "^Bearer"}}},
        ),
        "Forbidden": err("The credential is valid but not for this device."),
        "NotFound": err("No such resource for this tenant (another tenant's is not found either)."),
        "MethodNotAllowed": err("The device refused the operation on this path (CoAP 4.05)."),
        "Conflict": err("The PSK identity or certificate is already in use (in this tenant)."),
        "PreconditionFailed": err(
            "Not possible in the resource's state (e.g. another credential kind, key not active, "
            "a certificate that does not chain to a CA of this tenant)."
        ),
        "PayloadTooLarge": err("The body is larger than http.max_body_bytes."),
        "UnsupportedMediaType": err("The body's media type is not accepted here."),
        "TooManyRequests": err(
            "A limit refused the request: too many failed authentications from this address, "
            "or the device's uplink rate.",
            {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
        ),
        "DeviceError": err(
            "The device answered with a server error (5.xx, its code in `coap_code`), an "
            "unexpected code or a body that cannot be put together; not retryable as such."
        ),
        "Unavailable": err(
            "The store is unreachable, or the LwM2M device is not reachable or did not answer "
            "in time: nothing was done; retry later.",
            {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
        ),
    }


def _json_body(schema: Json, *, required: bool = True) -> Json:
    return {"required": required, "content": _json_content(schema)}


def _paths() -> Json:
    admin = {"tags": _ADMIN_TAG, "security": _ADMIN}
    return {
        "/api/v1/devices/{device_id}/uplink": {
            "post": {
                "operationId": "SendUplink",
                "tags": ["device"],
                "summary": "A device sends one message (API key in either header).",
                "description": "Identity comes from the key only. Both headers present and "
                "different: 400. 202 only after the message is stored.",
                "security": [{"deviceBearer": []}, {"deviceApiKey": []}],
                "parameters": [_DEVICE_ID],
                "requestBody": _json_body(_ref("UplinkRequest")),
                "responses": {
                    "202": _ok("Stored in the tenant's uplink stream.", _ref("UplinkAccepted")),
                    **_errors(400, 401, 403, 404, 413, 429, 503),
                },
            }
        },
        "/api/v1/devices": {
            "post": {
                **admin,
                "operationId": "ProvisionDevice",
                "summary": "Provision a device (idempotent on hardware_id).",
                "requestBody": _json_body(_ref("ProvisionRequest")),
                "responses": {
                    "201": {
                        **_ok(
                            "Created; the secret is in this answer only.", _ref("ProvisionResult")
                        ),
                        "headers": {"Location": {"schema": _STR}},
                    },
                    "200": _ok(
                        "Already provisioned: the existing device, no secret.",
                        _ref("ProvisionResult"),
                    ),
                    **_errors(400, 401, 404, 409, 412, 413, 429, 503),
                },
            },
            "get": {
                **admin,
                "operationId": "ListDevices",
                "summary": "The tenant's devices, or the one with a hardware_id.",
                "parameters": [
                    _query_param(
                        "hardware_id",
                        "Only the device with this hardware id (empty list if none).",
                        {"type": "string", "pattern": "^[A-Za-z0-9._:@+=-]{1,128}$"},
                    ),
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {
                    "200": _ok("A page of devices.", _ref("DeviceList")),
                    **_errors(*_ADMIN_ERRORS),
                },
            },
        },
        "/api/v1/devices/{device_id}": {
            "get": {
                **admin,
                "operationId": "GetDevice",
                "summary": "A device and its credentials (never a secret).",
                "parameters": [_DEVICE_ID],
                "responses": {
                    "200": _ok("The device.", _ref("DeviceDetail")),
                    **_errors(*_ADMIN_ERRORS),
                },
            }
        },
        "/api/v1/devices/{device_id}/keys": {
            "post": {
                **admin,
                "operationId": "CreateAPIKey",
                "summary": "A new API key for an api_key device (the raw key, once).",
                "parameters": [_DEVICE_ID],
                "responses": {
                    "201": _ok("The new key.", _ref("IssuedApiKey")),
                    **_errors(400, 401, 404, 412, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/keys/{key_id}/rotate": {
            "post": {
                **admin,
                "operationId": "RotateAPIKey",
                "summary": "Replace a key; the old one works for the overlap window.",
                "parameters": [_DEVICE_ID, _KEY_ID],
                "requestBody": _json_body(_ref("RotateApiKeyRequest"), required=False),
                "responses": {
                    "200": _ok("The new key.", _ref("IssuedApiKey")),
                    **_errors(400, 401, 404, 412, 413, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/keys/{key_id}": {
            "delete": {
                **admin,
                "operationId": "RevokeAPIKey",
                "summary": "Revoke a key now (idempotent).",
                "parameters": [_DEVICE_ID, _KEY_ID],
                "responses": {
                    "200": _ok("The key's record.", _ref("Credential")),
                    **_errors(*_ADMIN_ERRORS),
                },
            }
        },
        "/api/v1/devices/{device_id}/psk/rotate": {
            "post": {
                **admin,
                "operationId": "RotatePSK",
                "summary": "A new PSK (and identity unless given); the old one stops now.",
                "parameters": [_DEVICE_ID],
                "requestBody": _json_body(_ref("RotatePskRequest"), required=False),
                "responses": {
                    "200": _ok("The new PSK (hex), once.", _ref("IssuedPsk")),
                    **_errors(400, 401, 404, 409, 412, 413, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/psk": {
            "delete": {
                **admin,
                "operationId": "RevokePSK",
                "summary": "Revoke the device's PSK now.",
                "parameters": [_DEVICE_ID],
                "responses": {
                    "200": _ok("The PSK's record.", _ref("Credential")),
                    **_errors(400, 401, 404, 412, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/certs": {
            "post": {
                **admin,
                "operationId": "RegisterDeviceCert",
                "summary": "Register an x509 device's certificate (PEM body or JSON {pem}).",
                "parameters": [_DEVICE_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-pem-file": {"schema": _STR},
                        "text/plain": {"schema": _STR},
                        "application/json": {"schema": _ref("CertJson")},
                    },
                },
                "responses": {
                    "201": _ok("The certificate's record.", _ref("Credential")),
                    **_errors(400, 401, 404, 409, 412, 413, 415, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/downlinks": {
            "post": {
                **admin,
                "operationId": "SendDownlink",
                "summary": "Send a message to a device (as `corem-ingress downlink`).",
                "description": "Recorded in the tenant's downlink stream; queued for a "
                "device with a persistent session (MQTT CleanSession 0 / Session Expiry, a "
                "CoAP observer of /down); handed to the node holding the device's live "
                "session, which answers within downlinks.reply_wait_s. The answer says what "
                "happened: delivered, queued (with its position) or dropped (with the "
                "reason). Audited as downlink.send.",
                "parameters": [_DEVICE_ID],
                "requestBody": _json_body(_ref("DownlinkRequest")),
                "responses": {
                    "202": _ok("Recorded; what became of it.", _ref("DownlinkAccepted")),
                    **_errors(400, 401, 404, 413, 429, 503),
                },
            }
        },
        "/api/v1/devices/certs": {
            "get": {
                **admin,
                "operationId": "ListDeviceCerts",
                "summary": "The tenant's certificates, or one device's (paginated).",
                "parameters": [
                    _query_param("device_id", "Only this device's.", _UUID),
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {
                    "200": _ok("A page of certificates.", _ref("CertList")),
                    **_errors(*_ADMIN_ERRORS),
                },
            }
        },
        "/api/v1/devices/certs/{fingerprint}": {
            "delete": {
                **admin,
                "operationId": "RevokeDeviceCert",
                "summary": "Revoke a certificate now (idempotent).",
                "parameters": [_FINGERPRINT],
                "responses": {
                    "200": _ok("The certificate's record.", _ref("Credential")),
                    **_errors(*_ADMIN_ERRORS),
                },
            }
        },
        "/api/v1/challenges": {
            "post": {
                **admin,
                "operationId": "CreateChallenge",
                "summary": "A proof-of-possession challenge for this tenant (single use, "
                "expires after 300 s).",
                "responses": {
                    "201": _ok("Sign it with the key, or put it in a CSR.", _ref("Challenge")),
                    **_errors(401, 429, 503),
                },
            }
        },
        "/api/v1/cas": {
            "post": {
                **admin,
                "operationId": "AddTenantCA",
                "summary": "Add a trust anchor (root or intermediate CA) for this tenant's "
                "device certificates, with proof of possession of the CA's key.",
                "requestBody": _json_body(_ref("AddCaRequest")),
                "responses": {
                    "201": _ok("Added.", _ref("Ca")),
                    "200": _ok("Already a CA of this tenant: unchanged.", _ref("Ca")),
                    **_errors(400, 401, 412, 413, 429, 503),
                },
            },
            "get": {
                **admin,
                "operationId": "ListTenantCAs",
                "summary": "This tenant's CAs (subject, validity, key type).",
                "parameters": [_LIMIT, _CURSOR],
                "responses": {
                    "200": _ok("A page of CAs.", _ref("CaList")),
                    **_errors(400, 401, 429, 503),
                },
            },
        },
        "/api/v1/cas/{ca_fingerprint}": {
            "delete": {
                **admin,
                "operationId": "RemoveTenantCA",
                "summary": "Remove a CA now: certificates chaining only to it stop "
                "authenticating, live sessions included, on every node.",
                "parameters": [_CA_FINGERPRINT],
                "responses": {
                    "200": _ok("The removed CA.", _ref("Ca")),
                    **_errors(401, 404, 429, 503),
                },
            }
        },
        "/api/v1/devices/{device_id}/lwm2m": {
            "get": {
                **admin,
                "operationId": "GetLwm2mRegistration",
                "summary": "The device's LwM2M registration (404 when not registered).",
                "parameters": [_DEVICE_ID],
                "responses": {
                    "200": _ok("The registration.", _ref("Lwm2mRegistration")),
                    **_errors(*_ADMIN_ERRORS),
                },
            }
        },
        **{
            f"/api/v1/devices/{{device_id}}/lwm2m/{name}": {
                "post": {
                    **admin,
                    "operationId": "Lwm2m" + name.title().replace("-", ""),
                    "summary": summary,
                    "description": "Sent as a CoAP request over the device's DTLS session "
                    "from the node holding it (routed through Redis). A device's 4.xx maps to "
                    "400/403/404/405/412; its 5.xx to 502 (DEVICE_ERROR, with `coap_code`); "
                    "no answer in time, or the device not reachable: 503.",
                    "parameters": [_DEVICE_ID],
                    "requestBody": _json_body(_ref("Lwm2mRequest")),
                    "responses": {
                        "200": _ok("The device's answer.", _ref("Lwm2mResult")),
                        "202": _ok(
                            "Queue mode: the device sleeps; the request waits for it "
                            "(GET /api/v1/lwm2m/requests/{request_id}, or the events).",
                            _ref("Lwm2mQueuedRequest"),
                        ),
                        **_errors(400, 401, 403, 404, 405, 412, 413, 429, 502, 503),
                    },
                }
            }
            for name, summary in _LWM2M_OPERATIONS.items()
        },
        "/api/v1/lwm2m/requests/{request_id}": {
            "get": {
                **admin,
                "operationId": "GetLwm2mQueuedRequest",
                "summary": "A queued request (queue mode): its state and, once done, the answer.",
                "parameters": [
                    _path_param(
                        "request_id",
                        "The id a 202 answered (`rq_` + 24 hex).",
                        {"type": "string", "pattern": "^rq_[0-9a-f]{24}$"},
                    )
                ],
                "responses": {
                    "200": _ok("The request.", _ref("Lwm2mQueuedRequest")),
                    **_errors(401, 404, 429, 503),
                },
            }
        },
        "/api/v1/lwm2m/firmware": {
            "post": {
                **admin,
                "operationId": "UploadFirmware",
                "summary": "Upload a firmware image (the body, application/octet-stream).",
                "description": "Stored in Redis in 64 KiB chunks; at most "
                "lwm2m.firmware_max_bytes (413 beyond).",
                "parameters": [
                    {**_query_param("name", "The image's name.", _STR), "required": True},
                    {**_query_param("version", "The image's version.", _STR), "required": True},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "201": _ok("The stored image.", _ref("FirmwareImage")),
                    **_errors(400, 401, 413, 415, 429, 503),
                },
            },
            "get": {
                **admin,
                "operationId": "ListFirmware",
                "summary": "The tenant's firmware images, newest first (at most 100).",
                "responses": {
                    "200": _ok("The images.", _ref("FirmwareImageList")),
                    **_errors(401, 429, 503),
                },
            },
        },
        "/api/v1/lwm2m/firmware/{image_id}/updates": {
            "post": {
                **admin,
                "operationId": "StartFirmwareUpdate",
                "summary": "Update devices to the image (a campaign): one job per device, "
                "driven by the node holding its session.",
                "parameters": [
                    _path_param(
                        "image_id",
                        "The image (`fw_` + 24 hex).",
                        {"type": "string", "pattern": "^fw_[0-9a-f]{24}$"},
                    )
                ],
                "requestBody": _json_body(_ref("FirmwareUpdateRequest")),
                "responses": {
                    "201": _ok("The campaign.", _ref("FirmwareCampaign")),
                    **_errors(400, 401, 404, 413, 429, 503),
                },
            }
        },
        "/api/v1/lwm2m/campaigns/{campaign_id}": {
            "get": {
                **admin,
                "operationId": "GetFirmwareCampaign",
                "summary": "A firmware campaign: counts per status and each device's job.",
                "parameters": [
                    _path_param(
                        "campaign_id",
                        "The campaign (`fc_` + 24 hex).",
                        {"type": "string", "pattern": "^fc_[0-9a-f]{24}$"},
                    )
                ],
                "responses": {
                    "200": _ok("The campaign.", _ref("FirmwareCampaign")),
                    **_errors(401, 404, 429, 503),
                },
            }
        },
        "/api/v1/lwm2m/events": {
            "get": {
                **admin,
                "operationId": "FollowLwm2mEvents",
                "summary": "The tenant's LwM2M events as Server-Sent Events (text/event-stream).",
                "description": "Each event: `id` (resume with Last-Event-ID), `event` (the kind: "
                "registered, updated, deregistered, expired, awake, observation_cancelled, "
                "request_done, request_failed, firmware) and `data` (one line of JSON: id, kind, "
                "tenant_id, device_id, at, data). Without Last-Event-ID only new events are "
                "sent; a `: keepalive` comment comes every 15 s on an idle stream. The stream "
                "ends when the node shuts down or loses Redis: reconnect with Last-Event-ID.",
                "parameters": [
                    _query_param("device_id", "Only this device's events.", _UUID),
                    _query_param(
                        "last_event_id",
                        "Resume after this event id (as the Last-Event-ID header; 0: from the "
                        "oldest event kept).",
                        {"type": "string", "pattern": "^(0|[0-9]{1,20}-[0-9]{1,20})$"},
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The id of the last event received (SSE reconnection).",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 429, 503),
                },
            }
        },
        "/api/v1/lwm2m/models": {
            "get": {
                **admin,
                "operationId": "ListLwm2mModels",
                "summary": "The LwM2M object models in use (shipped OMA objects 0-7 and 3303, "
                "plus lwm2m.models_dir), without their resources.",
                "responses": {
                    "200": _ok(
                        "The objects.",
                        _obj(
                            ["objects"],
                            {"objects": {"type": "array", "items": _ref("Lwm2mObjectModel")}},
                        ),
                    ),
                    **_errors(401, 429, 503),
                },
            }
        },
        "/api/v1/lwm2m/models/{object_id}": {
            "get": {
                **admin,
                "operationId": "GetLwm2mModel",
                "summary": "One object's model with its resources (404 when unknown).",
                "parameters": [
                    {
                        "name": "object_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,5}$"},
                    }
                ],
                "responses": {
                    "200": _ok("The object.", _ref("Lwm2mObjectModel")),
                    **_errors(400, 401, 404, 429, 503),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "GetOpenAPI",
                "tags": ["meta"],
                "summary": "This document.",
                "security": [],
                "responses": {"200": _ok("The OpenAPI document.", {"type": "object"})},
            }
        },
    }


def document() -> Json:
    from corem_ingress.adapters.http import openapi_console  # its routes import this module

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "corem_ingress HTTP API",
            "version": "1",
            "description": "Device uplink (API keys) and the operator admin API (per-tenant "
            'operator tokens). Errors are always {"error": {"code", "message"}}. '
            "See docs/http-api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "tags": [
            {"name": "device", "description": "Devices, with their API key."},
            {"name": "admin", "description": "Operators, with a tenant's operator token."},
            {"name": "meta"},
        ],
        "paths": {**_paths(), **openapi_console.paths(), **_provisioning_paths()},
        "components": {
            "schemas": {
                **_schemas(),
                **openapi_console.schemas(),
                **_provisioning_schemas(),
            },
            "responses": _responses(),
            "securitySchemes": {
                "deviceBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer sk_live_...",
                },
                "deviceApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "operatorBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's operator token (configured as its SHA-256).",
                },
            },
        },
    }


@cache
def query_parameters() -> dict[tuple[str, str], frozenset[str]]:
    """(METHOD, route template) -> the query parameters the document allows there."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            out[(method.upper(), path)] = frozenset(names)
    return out


@cache
def render() -> bytes:
    """The document as served and as kept in docs/openapi.json."""
    return (json.dumps(document(), indent=2) + "\n").encode()


async def serve(_request: web.Request) -> web.Response:
    return web.Response(body=render(), content_type="application/json")


def main() -> int:
    sys.stdout.buffer.write(render())
    return 0
