"""``POST /api/v1/devices/{device_id}/uplink``: a device sends one message with its API key.

Order of checks: which key (400 if two differ), the source address's auth throttle (429),
the key (401), the key's device against the path (403), the device's rate (429), then
the body (413, 400). Identity comes from the key only. The device gets 202 only after
the envelope is in the tenant's Redis stream; if the append fails it gets 503 and
may retry (the message id is new on every attempt).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corem_ingress.adapters.http.appender import Appender
from corem_ingress.adapters.http.bodies import parse_json_object, read_body
from corem_ingress.adapters.http.device_auth import api_key_from_headers
from corem_ingress.adapters.http.guard import AuthGuard
from corem_ingress.adapters.http.provisioning import ProvisioningApi
from corem_ingress.core.errors import InvalidArgument, PermissionDenied
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.services import Services

UPLINK_PATH = "/api/v1/devices/{device_id}/uplink"
_FIELDS = frozenset({"kind", "payload"})
JSON = "application/json"


def parse_uplink_body(body: bytes) -> tuple[UplinkKind, Any]:
    """``{"kind": "telemetry"|"event"|"state", "payload": <any JSON value>}``."""
    doc = parse_json_object(body, allowed=_FIELDS)
    if "kind" not in doc:
        raise InvalidArgument("field 'kind' is required")
    if "payload" not in doc:
        raise InvalidArgument("field 'payload' is required")
    kind = doc["kind"]
    if not isinstance(kind, str):
        raise InvalidArgument("kind must be one of: telemetry, event, state")
    return UplinkKind.parse(kind), doc["payload"]


class DeviceApi:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._guard = AuthGuard(services)
        self._resolve_api_key = services.resolver.resolve_api_key
        self._cached_api_key = services.resolver.cached_api_key
        self._limit = services.config.http.max_body_bytes
        self.appender = Appender(services.stores.uplink_batcher(), services.stores.timeout_s)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(UPLINK_PATH, self.uplink)
        ProvisioningApi(self._services).add_routes(app)  # devices enrolling with a claim

    async def uplink(self, request: web.Request) -> web.Response:
        raw_key = api_key_from_headers(request.headers)
        identity = await self._guard.authenticate(
            request, self._resolve_api_key, raw_key, self._cached_api_key
        )
        if request.match_info["device_id"] != identity.device_id:
            raise PermissionDenied("this API key does not belong to that device")
        self._guard.uplink_allowed(identity.device_id)
        body = await read_body(request, self._limit)
        kind, payload = parse_uplink_body(body)
        uplink = Uplink.new(identity, Transport.HTTP, kind, payload, now=self._services.clock())
        error = await self.appender.submit(uplink)
        if error is not None:
            raise error  # Unavailable -> 503, nothing acknowledged
        return web.Response(text=accepted_body(uplink), status=202, content_type=JSON)


def accepted_body(uplink: Uplink) -> str:
    """``json.dumps({"message_id": ..., "received_at": ...})`` without the encoder: the id
    is hex and a float's repr is its JSON, so the text is the same (a test holds it)."""
    return f'{{"message_id": "{uplink.message_id}", "received_at": {uplink.received_at!r}}}'
