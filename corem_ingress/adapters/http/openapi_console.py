"""The OpenAPI part of the routes the operator console adds to the admin API: live sessions
across the nodes, the nodes' health, the audit log, who the caller is, and the tenant's
uplinks (latest, and a live tail as Server-Sent Events). Merged by ``openapi.document()``.
"""

from __future__ import annotations

from corem_ingress.adapters.http import openapi as o
from corem_ingress.adapters.http.sessions_api import (
    AUDIT,
    LWM2M_OBJECTS,
    NODES,
    SESSION,
    SESSIONS,
    TRANSPORTS,
    WHOAMI,
)
from corem_ingress.adapters.http.uplink_tail import UPLINK_STREAM, UPLINKS

Json = o.Json
_STR = {"type": "string"}
_NUM = {"type": "number"}
_ERRORS = (400, 401, 429, 503)
_STREAM_ID = {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"}
_DEVICE_QUERY = o._query_param(
    "device_id",
    "Only this device's.",
    {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:@+=-]+$"},
)


def _text_query(name: str, description: str, max_len: int) -> Json:
    return o._query_param(
        name,
        description,
        {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": "^[ -~]+$"},
    )


def _limit(default: int) -> Json:
    return o._query_param(
        "limit",
        "How many at most.",
        {"type": "integer", "minimum": 1, "maximum": 500, "default": default},
    )


def schemas() -> Json:
    session = o._obj(
        [
            "session_id",
            "tenant_id",
            "device_id",
            "transport",
            "node_id",
            "since",
            "peer",
            "credential_kind",
            "credential_id",
        ],
        {
            "session_id": _STR,
            "tenant_id": _STR,
            "device_id": _STR,
            "transport": {"type": "string", "enum": list(TRANSPORTS)},
            "node_id": {**_STR, "description": "The node holding the session."},
            "since": {**_NUM, "description": "When the session started (Unix seconds)."},
            "peer": {"type": ["string", "null"], "description": "The device's address."},
            "credential_kind": {"type": "string", "enum": ["api_key", "psk", "x509"]},
            "credential_id": _STR,
        },
    )
    audit = o._obj(
        ["id", "at", "actor", "tenant_id", "action", "target", "outcome"],
        {
            "id": _STREAM_ID,
            "at": _NUM,
            "actor": _STR,
            "tenant_id": _STR,
            "action": _STR,
            "target": _STR,
            "outcome": {**_STR, "description": "OK, or the error code it ended with."},
        },
    )
    uplink = o._obj(
        [
            "id",
            "message_id",
            "tenant_id",
            "device_id",
            "transport",
            "kind",
            "payload",
            "payload_encoding",
            "received_at",
        ],
        {
            "id": _STREAM_ID,
            "message_id": _STR,
            "tenant_id": _STR,
            "device_id": _STR,
            "transport": _STR,
            "kind": _STR,
            "payload": {"description": "The uplink's payload (JSON value)."},
            "payload_encoding": _STR,
            "received_at": _NUM,
            "properties": {"type": "object"},
        },
    )
    node = o._obj(
        ["node_id", "tenant_sessions"],
        {
            "node_id": _STR,
            "at": {**_NUM, "description": "The node's last heartbeat."},
            "accepting": {"type": "boolean"},
            "dependencies": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "sessions": {
                "type": "object",
                "description": "The node's live sessions per transport (all tenants).",
                "additionalProperties": {"type": "integer"},
            },
            "tenant_sessions": {
                "type": "object",
                "description": "This tenant's live sessions on the node, per transport.",
                "additionalProperties": {"type": "integer"},
            },
            "modules": {
                "type": "string",
                "enum": ["compiled", "pure", "mixed"],
                "description": "Which build of the hot modules the node runs (COREM_PURE).",
            },
            "uplinks_total": _NUM,
            "auth_failures_total": _NUM,
            "revocations_total": _NUM,
            "revocation_latency_sum_s": _NUM,
        },
    )
    return {
        "LiveSession": session,
        "SessionList": o._obj(
            ["sessions", "truncated"],
            {
                "sessions": {"type": "array", "items": o._ref("LiveSession")},
                "truncated": {"type": "boolean", "description": "More matched than `limit`."},
            },
        ),
        "SessionDisconnected": o._obj(
            ["session", "disconnected", "revoked", "note"],
            {
                "session": o._ref("LiveSession"),
                "disconnected": {
                    "type": "boolean",
                    "description": "The session left the index within a few seconds.",
                },
                "revoked": {"const": False, "description": "A disconnect never revokes."},
                "note": _STR,
            },
        ),
        "NodeStatus": node,
        "NodeList": o._obj(
            ["nodes", "interval_s"],
            {"nodes": {"type": "array", "items": o._ref("NodeStatus")}, "interval_s": _NUM},
        ),
        "AuditRecord": audit,
        "AuditPage": o._obj(
            ["records", "next_before"],
            {
                "records": {"type": "array", "items": o._ref("AuditRecord")},
                "next_before": {
                    "type": ["string", "null"],
                    "description": "Pass as `before` for older records (null: no more).",
                },
            },
        ),
        "WhoAmI": o._obj(["tenant_id", "actor"], {"tenant_id": _STR, "actor": _STR}),
        "Lwm2mObjectList": o._obj(
            ["objects"],
            {
                "objects": {
                    "type": "array",
                    "items": o._obj(
                        ["id", "name", "version", "multiple", "resources"],
                        {
                            "id": {"type": "integer"},
                            "name": _STR,
                            "version": _STR,
                            "multiple": {"type": "boolean"},
                            "resources": {
                                "type": "array",
                                "items": o._obj(
                                    ["id", "name", "type", "operations", "multiple"],
                                    {
                                        "id": {"type": "integer"},
                                        "name": _STR,
                                        "type": _STR,
                                        "operations": {"type": "string", "pattern": "^R?W?E?$"},
                                        "multiple": {"type": "boolean"},
                                    },
                                ),
                            },
                        },
                    ),
                }
            },
        ),
        "UplinkRecord": uplink,
        "UplinkList": o._obj(
            ["uplinks"], {"uplinks": {"type": "array", "items": o._ref("UplinkRecord")}}
        ),
    }


def paths() -> Json:
    admin = {"tags": o._ADMIN_TAG, "security": o._ADMIN}
    return {
        SESSIONS: {
            "get": {
                **admin,
                "operationId": "ListSessions",
                "summary": "The tenant's live sessions on every node (the sessions index).",
                "parameters": [
                    _DEVICE_QUERY,
                    o._query_param(
                        "transport",
                        "Only this transport's.",
                        {"type": "string", "enum": list(TRANSPORTS)},
                    ),
                    _limit(100),
                ],
                "responses": {
                    "200": o._ok("Newest first.", o._ref("SessionList")),
                    **o._errors(*_ERRORS),
                },
            }
        },
        SESSION: {
            "delete": {
                **admin,
                "operationId": "DisconnectSession",
                "summary": "Disconnect one live session (not a revocation).",
                "description": "The node holding the session closes it (routed over the "
                "bus). The credential stays valid: the device may connect again. Audited "
                "as sessions.disconnect.",
                "parameters": [
                    o._path_param(
                        "session_id",
                        "A session id from GET /api/v1/sessions.",
                        {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                    )
                ],
                "responses": {
                    "200": o._ok("Asked; whether it went.", o._ref("SessionDisconnected")),
                    **o._errors(*_ERRORS, 404),
                },
            }
        },
        NODES: {
            "get": {
                **admin,
                "operationId": "ListNodes",
                "summary": "Live nodes: status, key figures, this tenant's sessions per transport.",
                "responses": {
                    "200": o._ok("Every node with a recent heartbeat.", o._ref("NodeList")),
                    **o._errors(401, 429, 503),
                },
            }
        },
        AUDIT: {
            "get": {
                **admin,
                "operationId": "ListAudit",
                "summary": "The tenant's audit records, newest first, with filters.",
                "parameters": [
                    _text_query("action", "The action starts with this (`keys.`).", 64),
                    _text_query("actor", "Exactly this actor (`admin:ops-alice`).", 80),
                    _text_query("target", "The target contains this.", 200),
                    _text_query("outcome", "`OK` or an error code.", 64),
                    o._query_param("before", "`next_before` of the previous page.", _STREAM_ID),
                    _limit(50),
                ],
                "responses": {
                    "200": o._ok("A page of records.", o._ref("AuditPage")),
                    **o._errors(*_ERRORS),
                },
            }
        },
        WHOAMI: {
            "get": {
                **admin,
                "operationId": "WhoAmI",
                "summary": "The operator token's tenant and audit actor (console sign-in).",
                "responses": {
                    "200": o._ok("Who the token is.", o._ref("WhoAmI")),
                    **o._errors(401, 429, 503),
                },
            }
        },
        LWM2M_OBJECTS: {
            "get": {
                **admin,
                "operationId": "ListLwm2mObjects",
                "summary": "The LwM2M object models the server knows (object and resource "
                "names, types, operations).",
                "responses": {
                    "200": o._ok("The models.", o._ref("Lwm2mObjectList")),
                    **o._errors(401, 429, 503),
                },
            }
        },
        UPLINKS: {
            "get": {
                **admin,
                "operationId": "ListUplinks",
                "summary": "The tenant's latest uplinks (of one device), newest first.",
                "parameters": [_DEVICE_QUERY, _limit(20)],
                "responses": {
                    "200": o._ok("Latest uplinks.", o._ref("UplinkList")),
                    **o._errors(*_ERRORS),
                },
            }
        },
        UPLINK_STREAM: {
            "get": {
                **admin,
                "operationId": "TailUplinks",
                "summary": "Live tail of the tenant's uplinks as Server-Sent Events.",
                "description": "`text/event-stream`: one `uplink` event per entry (`id` is "
                "the stream id, `data` the uplink as JSON), a comment every 15 s. Resume "
                "with the `Last-Event-ID` header or `last_event_id`. 503 past "
                "console.max_streams tails on the node.",
                "parameters": [
                    _DEVICE_QUERY,
                    o._query_param("last_event_id", "Resume after this stream id.", _STREAM_ID),
                ],
                "responses": {
                    "200": {
                        "description": "The event stream (never ends by itself).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **o._errors(*_ERRORS),
                },
            }
        },
    }
