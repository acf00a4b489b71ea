"""The admin API of live sessions (every node's, from the sessions index), the nodes' health,
the audit log and who the caller is: ``/api/v1/sessions``, ``/api/v1/nodes``,
``/api/v1/audit``, ``/api/v1/whoami``. Tenant-scoped by the operator token like the rest.

A disconnect (``DELETE /api/v1/sessions/{session_id}``) is not a revocation: the session's
node closes it (MQTT DISCONNECT 0x98 / close, DTLS close_notify) and the credential stays
valid, so the device may connect again; revoke the credential to keep it out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corem_ingress.adapters.http.bodies import page_params
from corem_ingress.core.errors import InvalidArgument, NotFound
from corem_ingress.lwm2m.model import ObjectModel
from corem_ingress.lwm2m.objects import load_model
from corem_ingress.store.audit_log import AuditFilter, check_stream_id

if TYPE_CHECKING:
    from corem_ingress.adapters.http.admin import AdminApi

SESSIONS = "/api/v1/sessions"
SESSION = "/api/v1/sessions/{session_id}"
NODES = "/api/v1/nodes"
AUDIT = "/api/v1/audit"
WHOAMI = "/api/v1/whoami"
LWM2M_OBJECTS = "/api/v1/lwm2m/objects"

#: What a live session's ``transport`` can be: MQTT connections, and DTLS sessions on the CoAP
#: port (an LwM2M device's too: LwM2M runs over those sessions). HTTP has no sessions. A
#: filter by anything else could only ever answer an empty list, so it is refused.
TRANSPORTS = ("mqtt", "coap")
#: How long a disconnect waits to see the session leave the index (its node closed it).
DISCONNECT_WAIT_S = 3.0
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_NO_STORE = {"Cache-Control": "no-store"}
DISCONNECT_NOTE = (
    "disconnected, not revoked: the credential stays valid and the device may connect "
    "again; revoke the credential to keep it out"
)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_NO_STORE)


#: Query values the console's routes take: printable ASCII; ids a narrower set.
PRINTABLE_RE = re.compile(r"[ -~]+")
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9._:@+=-]+")


def query_text(
    request: web.Request, name: str, max_len: int, pattern: re.Pattern[str] = PRINTABLE_RE
) -> str | None:
    """A query parameter checked as the OpenAPI document describes it (None: absent)."""
    value = request.query.get(name)
    if value is None:
        return None
    if not 1 <= len(value) <= max_len or not pattern.fullmatch(value):
        raise InvalidArgument(f"{name} must be 1-{max_len} characters of {pattern.pattern}")
    return value


def device_param(request: web.Request) -> str | None:
    return query_text(request, "device_id", 128, DEVICE_ID_RE)


def objects_json(model: ObjectModel) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for oid in model.object_ids():
        obj = model.object(oid)
        assert obj is not None
        out.append(
            {
                "id": obj.id,
                "name": obj.name,
                "version": obj.version,
                "multiple": obj.multiple_instances,
                "resources": [
                    {
                        "id": r.id,
                        "name": r.name,
                        "type": r.type.value,
                        "operations": r.operations,
                        "multiple": r.multiple,
                    }
                    for r in sorted(obj.resources.values(), key=lambda r: r.id)
                ],
            }
        )
    return out


class SessionsApi:
    def __init__(self, admin: AdminApi) -> None:
        self._admin = admin
        services = admin.services
        self._index = services.stores.sessions_index(
            interval_s=services.config.sessions.index_interval_s or 1.0, clock=services.clock
        )
        self._audit = services.stores.audit_log()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(SESSIONS, self.list_sessions)
        r.add_delete(SESSION, self.disconnect)
        r.add_get(NODES, self.list_nodes)
        r.add_get(AUDIT, self.audit_log)
        r.add_get(WHOAMI, self.whoami)
        r.add_get(LWM2M_OBJECTS, self.lwm2m_objects)

    async def lwm2m_objects(self, request: web.Request) -> web.Response:
        """The LwM2M object models the server knows (names of objects and resources)."""
        await self._admin.operator(request)
        model = load_model(self._admin.services.config.lwm2m.models_dir)
        return _json({"objects": objects_json(model)})

    async def whoami(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        return _json({"tenant_id": op.tenant_id, "actor": op.actor})

    async def list_sessions(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        device_id = device_param(request)
        transport = request.query.get("transport")
        if transport is not None and transport not in TRANSPORTS:
            raise InvalidArgument(f"transport must be one of {', '.join(TRANSPORTS)}")
        limit, _cursor = page_params(request)

        async def read() -> dict[str, object]:
            sessions, truncated = await self._index.of_tenant(
                op.tenant_id, device_id=device_id, transport=transport, limit=limit
            )
            return {"sessions": sessions, "truncated": truncated}

        target = f"device={device_id or '*'} transport={transport or '*'}"
        return _json(await self._admin.audited_read(op, "sessions.list", target, read()))

    async def disconnect(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        session_id = request.match_info["session_id"]
        if not _SESSION_ID_RE.fullmatch(session_id):
            raise NotFound("session not found")
        entry = await self._index.find(op.tenant_id, session_id)
        target = f"session={session_id}"
        if entry is None:
            await self._admin.registry.audit(
                op.actor, op.tenant_id, "sessions.disconnect", target, NotFound.code
            )
            raise NotFound("session not found (not live, or not this tenant's)")
        target += f" device={entry.get('device_id')} node={entry.get('node_id')}"
        await self._index.request_disconnect(entry)
        gone = await self._index.wait_gone(entry, DISCONNECT_WAIT_S)
        await self._admin.registry.audit(op.actor, op.tenant_id, "sessions.disconnect", target)
        return _json(
            {"session": entry, "disconnected": gone, "revoked": False, "note": DISCONNECT_NOTE}
        )

    async def list_nodes(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        nodes = await self._index.nodes(op.tenant_id)
        return _json({"nodes": nodes, "interval_s": self._index.interval_s})

    async def audit_log(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        limit, _cursor = page_params(request, default_limit=50)
        before = request.query.get("before")
        if before is not None:
            check_stream_id(before, "before")
        flt = AuditFilter(
            action=query_text(request, "action", 64),
            actor=query_text(request, "actor", 80),
            target=query_text(request, "target", 200),
            outcome=query_text(request, "outcome", 64),
        )
        records, nxt = await self._audit.page(op.tenant_id, flt, limit=limit, before=before)
        body: dict[str, Any] = {"records": records, "next_before": nxt}
        return _json(body)
