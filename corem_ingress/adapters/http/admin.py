"""The operator admin API under ``/api/v1/devices``: provisioning, credential changes,
downlinks and LwM2M operations (the tenant's trust anchors, ``/api/v1/cas``, are in
``trust.py``).

Every request carries an operator token (``Authorization: Bearer``) that maps to
exactly one tenant; the registry is always asked with that tenant, so another
tenant's device, key or fingerprint is a 404 like one that does not exist.
Writes are audited by the registry itself (actor ``admin:<token name>``); reads
are audited here with the same record shape. Responses are ``no-store``: some
carry a secret, returned exactly once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from corem_ingress.adapters.http import console
from corem_ingress.adapters.http.bodies import (
    check_text,
    number_field,
    page_params,
    parse_json_object,
    read_body,
    text_field,
)
from corem_ingress.adapters.http.errors import UnsupportedMediaType
from corem_ingress.adapters.http.guard import AuthGuard
from corem_ingress.adapters.http.operators import Operator, OperatorTokens
from corem_ingress.adapters.http.provisioning import ClaimsApi
from corem_ingress.adapters.http.sessions_api import SessionsApi
from corem_ingress.adapters.http.trust import TrustApi, proof_field
from corem_ingress.adapters.http.uplink_tail import UplinkTailApi
from corem_ingress.adapters.lwm2m.firmware_calls import FirmwareCalls
from corem_ingress.adapters.lwm2m.operator import OPERATIONS, PARAM_FIELDS, OperatorCalls
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import IngressError, InvalidArgument, NotFound, Unauthenticated
from corem_ingress.core.identity import CredentialKind, check_device_id, check_hardware_id
from corem_ingress.core.proof import Proof
from corem_ingress.core.psk import parse_psk_hex
from corem_ingress.lwm2m.events import SSE_KEEPALIVE, check_event_id, sse_frame
from corem_ingress.lwm2m.objects import load_model
from corem_ingress.services import Services
from corem_ingress.store.downlinks import send_downlink

T = TypeVar("T")

DEVICES = "/api/v1/devices"
DEVICE = "/api/v1/devices/{device_id}"
KEYS = "/api/v1/devices/{device_id}/keys"
KEY = "/api/v1/devices/{device_id}/keys/{key_id}"
KEY_ROTATE = "/api/v1/devices/{device_id}/keys/{key_id}/rotate"
PSK = "/api/v1/devices/{device_id}/psk"
PSK_ROTATE = "/api/v1/devices/{device_id}/psk/rotate"
DEVICE_CERTS = "/api/v1/devices/{device_id}/certs"
CERTS = "/api/v1/devices/certs"
CERT = "/api/v1/devices/certs/{fingerprint}"
DOWNLINKS = "/api/v1/devices/{device_id}/downlinks"
LWM2M = "/api/v1/devices/{device_id}/lwm2m"
#: One route per LwM2M operation: /api/v1/devices/{device_id}/lwm2m/read, .../write, ...
LWM2M_OPERATION = "/api/v1/devices/{device_id}/lwm2m/{operation}"
LWM2M_EVENTS = "/api/v1/lwm2m/events"
LWM2M_REQUEST = "/api/v1/lwm2m/requests/{request_id}"
FIRMWARE = "/api/v1/lwm2m/firmware"
FIRMWARE_UPDATES = "/api/v1/lwm2m/firmware/{image_id}/updates"
CAMPAIGN = "/api/v1/lwm2m/campaigns/{campaign_id}"
#: An SSE comment at least this often on an idle event stream (proxies close idle ones).
SSE_KEEPALIVE_S = 15.0
#: The object models (shipped OMA objects and ``lwm2m.models_dir``): names for the console.
LWM2M_MODELS = "/api/v1/lwm2m/models"
LWM2M_MODEL = "/api/v1/lwm2m/models/{object_id}"

_KEY_ID_RE = re.compile(r"key_[0-9a-f]{16}")
_REQUEST_ID_RE = re.compile(r"rq_[0-9a-f]{24}")
_IMAGE_ID_RE = re.compile(r"fw_[0-9a-f]{24}")
_CAMPAIGN_ID_RE = re.compile(r"fc_[0-9a-f]{24}")
_UPDATE_FIELDS = frozenset({"device_ids", "method"})
_PROVISION_FIELDS = frozenset(
    {"hardware_id", "credential_kind", "cert_pem", "psk_identity", "psk_hex", "proof"}
)
_ROTATE_FIELDS = frozenset({"overlap_s"})
_PSK_FIELDS = frozenset({"psk_identity", "psk_hex"})
_CERT_FIELDS = frozenset({"pem", "proof"})
_DOWNLINK_FIELDS = frozenset({"kind", "payload", "qos", "expiry_s"})
_NO_STORE = {"Cache-Control": "no-store"}


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers={**_NO_STORE, **(headers or {})})


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    if not _KEY_ID_RE.fullmatch(key_id):
        raise NotFound("API key not found")
    return key_id


class AdminApi:
    def __init__(self, services: Services, tokens: OperatorTokens) -> None:
        self._s = services
        self._registry = services.registry
        self._tokens = tokens
        self._guard = AuthGuard(services)
        self._limit = services.config.http.max_body_bytes
        #: For the admin API's other route groups (``trust.py``, ``sessions_api.py``...).
        self.services = services
        self.registry = services.registry
        self.body_limit = self._limit
        self.clock = services.clock
        lwm2m = services.config.lwm2m
        self._lwm2m = OperatorCalls(
            services.registry,
            services.stores.lwm2m_store(grace_s=lwm2m.expiry_grace_s, clock=services.clock),
            services.stores.lwm2m_router(clock=services.clock),
            default_timeout_s=lwm2m.request_timeout_s,
            clock=services.clock,
            queue=services.stores.lwm2m_queue(clock=services.clock),
            queue_policy=lwm2m.queue_policy(),
            model=load_model(lwm2m.models_dir),
        )
        self._events = services.stores.lwm2m_events()
        self._firmware = FirmwareCalls(
            services.registry,
            services.stores.lwm2m_store(grace_s=lwm2m.expiry_grace_s, clock=services.clock),
            services.stores.lwm2m_router(clock=services.clock),
            services.stores.firmware(clock=services.clock),
            max_bytes=lwm2m.firmware_max_bytes,
            clock=services.clock,
        )
        self._firmware_max = lwm2m.firmware_max_bytes
        #: Set at shutdown: open event streams end (their clients resume with Last-Event-ID).
        self._closing = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        # The literal /certs routes first: they would otherwise match {device_id}.
        r.add_get(CERTS, self.list_certs)
        r.add_delete(CERT, self.revoke_cert)
        r.add_post(DEVICES, self.provision)
        r.add_get(DEVICES, self.list_devices)
        r.add_get(DEVICE, self.get_device)
        r.add_post(KEYS, self.create_key)
        r.add_post(KEY_ROTATE, self.rotate_key)
        r.add_delete(KEY, self.revoke_key)
        r.add_post(PSK_ROTATE, self.rotate_psk)
        r.add_delete(PSK, self.revoke_psk)
        r.add_post(DEVICE_CERTS, self.register_cert)
        r.add_post(DOWNLINKS, self.send_downlink)
        r.add_get(LWM2M, self.lwm2m_registration)
        r.add_get(LWM2M_MODELS, self.lwm2m_models)
        r.add_get(LWM2M_MODEL, self.lwm2m_model)
        for operation in OPERATIONS:
            r.add_post(LWM2M_OPERATION.replace("{operation}", operation), self.lwm2m_call)
        r.add_get(LWM2M_EVENTS, self.lwm2m_events)
        r.add_get(LWM2M_REQUEST, self.lwm2m_request)
        r.add_post(FIRMWARE, self.firmware_upload)
        r.add_get(FIRMWARE, self.firmware_images)
        r.add_post(FIRMWARE_UPDATES, self.firmware_update)
        r.add_get(CAMPAIGN, self.firmware_campaign)
        app.on_shutdown.append(self._close_streams)
        TrustApi(self).add_routes(app)
        SessionsApi(self).add_routes(app)
        ClaimsApi(self).add_routes(app)
        UplinkTailApi(self).add_routes(app)
        if self._s.config.console.enabled:
            console.add_routes(app)

    async def _close_streams(self, _app: web.Application) -> None:
        self._closing.set()

    # -- plumbing ----------------------------------------------------------------------------
    async def operator(self, request: web.Request) -> Operator:
        """The calling operator (throttled, 401 otherwise): the one way into every admin route."""
        return await self._guard.authenticate(request, self._operator_of, request)

    async def _operator_of(self, request: web.Request) -> Operator:
        values = request.headers.getall("Authorization", [])
        if len(values) > 1:
            raise Unauthenticated(cause=Cause.MALFORMED)
        return self._tokens.authenticate(values[0] if values else None)

    async def audited_read(self, op: Operator, action: str, target: str, aw: Awaitable[T]) -> T:
        """Await a read and write its audit record (outcome OK or the error code)."""
        audit = self._registry._audit  # the registry's own record shape for reads too
        try:
            result = await aw
        except IngressError as exc:
            await audit(op.actor, op.tenant_id, action, target, exc.code)
            raise
        await audit(op.actor, op.tenant_id, action, target, "OK")
        return result

    # -- devices -------------------------------------------------------------------------------
    async def provision(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        doc = parse_json_object(await read_body(request, self._limit), allowed=_PROVISION_FIELDS)
        hardware_id = text_field(doc, "hardware_id", required=True, max_len=128)
        kind_text = text_field(doc, "credential_kind", required=True, max_len=16)
        assert hardware_id is not None and kind_text is not None
        kind = CredentialKind.parse(kind_text)
        cert_pem = text_field(doc, "cert_pem", max_len=self._limit)
        psk_identity = text_field(doc, "psk_identity", max_len=256)
        psk_hex = text_field(doc, "psk_hex", max_len=256)
        result = await self._registry.provision(
            op.tenant_id,
            hardware_id,
            kind,
            actor=op.actor,
            cert_pem=cert_pem,
            psk_identity=psk_identity,
            psk_bytes=parse_psk_hex(psk_hex) if psk_hex is not None else None,
            proof_of_possession=proof_field(doc),
        )
        if result.created:
            location = f"{DEVICES}/{result.device.device_id}"
            return _json(result.to_json(), status=201, headers={"Location": location})
        return _json(result.to_json())

    async def get_device(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")

        async def read() -> dict[str, object]:
            device = await self._registry.get_device(op.tenant_id, device_id)
            creds = await self._registry.credentials(op.tenant_id, device_id)
            out = device.to_json()
            now = self._s.clock()
            out["credentials"] = [c.to_json(now) for c in creds]
            return out

        return _json(await self.audited_read(op, "devices.get", f"device={device_id}", read()))

    async def list_devices(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        limit, cursor = page_params(request)  # checked even where unused: as strict as the spec
        hardware_id = request.query.get("hardware_id")
        if hardware_id is not None:
            check_hardware_id(hardware_id)

            async def find() -> dict[str, object]:
                try:
                    device = await self._registry.find_device(op.tenant_id, hardware_id)
                except NotFound:
                    return {"devices": [], "next_cursor": None}
                return {"devices": [device.to_json()], "next_cursor": None}

            target = f"hardware_id={hardware_id}"
            return _json(await self.audited_read(op, "devices.find", target, find()))

        async def page() -> dict[str, object]:
            devices, nxt = await self._registry.list_devices(
                op.tenant_id, limit=limit, cursor=cursor
            )
            return {"devices": [d.to_json() for d in devices], "next_cursor": nxt}

        return _json(await self.audited_read(op, "devices.list", f"cursor={cursor or ''}", page()))

    # -- API keys ------------------------------------------------------------------------------
    async def create_key(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        issued = await self._registry.create_api_key(op.tenant_id, device_id, actor=op.actor)
        return _json(issued.to_json(), status=201)

    async def rotate_key(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        key_id = _key_id(request)
        body = await read_body(request, self._limit)
        doc = parse_json_object(body, allowed=_ROTATE_FIELDS, empty_ok=True)
        overlap = number_field(doc, "overlap_s")
        issued = await self._registry.rotate_api_key(
            op.tenant_id, key_id, actor=op.actor, device_id=device_id, overlap=overlap
        )
        return _json(issued.to_json())

    async def revoke_key(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        key_id = _key_id(request)
        rec = await self._registry.revoke_api_key(
            op.tenant_id, key_id, actor=op.actor, device_id=device_id
        )
        return _json(rec.to_json(self._s.clock()))

    # -- PSKs ----------------------------------------------------------------------------------
    async def rotate_psk(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        body = await read_body(request, self._limit)
        doc = parse_json_object(body, allowed=_PSK_FIELDS, empty_ok=True)
        psk_identity = text_field(doc, "psk_identity", max_len=256)
        psk_hex = text_field(doc, "psk_hex", max_len=256)
        issued = await self._registry.rotate_psk(
            op.tenant_id,
            device_id,
            actor=op.actor,
            psk_identity=psk_identity,
            psk_bytes=parse_psk_hex(psk_hex) if psk_hex is not None else None,
        )
        return _json(
            {
                "device_id": issued.device_id,
                "credential_id": issued.credential_id,
                "psk_identity": issued.psk_identity,
                "psk": issued.psk.hex(),
            }
        )

    async def revoke_psk(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        rec = await self._registry.revoke_psk(op.tenant_id, device_id, actor=op.actor)
        return _json(rec.to_json(self._s.clock()))

    # -- certificates ----------------------------------------------------------------------------
    async def register_cert(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        body = await read_body(request, self._limit)
        pem, given = self._cert_from_body(request.content_type, body)
        rec = await self._registry.register_cert(
            op.tenant_id, device_id, pem, actor=op.actor, proof_of_possession=given
        )
        return _json(rec.to_json(self._s.clock()), status=201)

    @staticmethod
    def _cert_from_body(content_type: str, body: bytes) -> tuple[str, Proof | None]:
        """JSON ``{"pem": ..., "proof"?: ...}`` or the PEM text itself (any text or PEM media
        type; no proof then)."""
        if content_type == "application/json":
            doc = parse_json_object(body, allowed=_CERT_FIELDS)
            pem = text_field(doc, "pem", required=True, max_len=len(body))
            assert pem is not None
            return pem, proof_field(doc)
        if content_type.startswith("multipart/") or content_type == (
            "application/x-www-form-urlencoded"
        ):
            raise UnsupportedMediaType('send the certificate as PEM text or as JSON {"pem": ...}')
        try:
            return body.decode("utf-8"), None
        except UnicodeDecodeError:
            raise InvalidArgument("certificate must be PEM text (UTF-8)") from None

    async def revoke_cert(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        fingerprint = check_text(request.match_info["fingerprint"], "fingerprint")
        rec = await self._registry.revoke_cert(op.tenant_id, fingerprint, actor=op.actor)
        return _json(rec.to_json(self._s.clock()))

    async def list_certs(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = request.query.get("device_id")
        if device_id is not None:
            check_text(device_id, "device_id")
        limit, cursor = page_params(request)

        async def page() -> dict[str, Any]:
            records, nxt = await self._registry.list_certs(
                op.tenant_id, device_id=device_id, limit=limit, cursor=cursor
            )
            now = self._s.clock()
            return {"certs": [r.to_json(now) for r in records], "next_cursor": nxt}

        target = f"device={device_id or '*'}"
        return _json(await self.audited_read(op, "certs.list", target, page()))

    # -- downlinks -------------------------------------------------------------------------------
    async def send_downlink(self, request: web.Request) -> web.Response:
        """``corem-ingress downlink`` over HTTP: recorded, queued or handed to the node holding
        the device's session, audited; 202 with what happened (delivered/queued/dropped)."""
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        doc = parse_json_object(await read_body(request, self._limit), allowed=_DOWNLINK_FIELDS)
        kind = text_field(doc, "kind", required=True, max_len=64)
        assert kind is not None
        if "payload" not in doc:
            raise InvalidArgument("field 'payload' is required")
        qos = doc.get("qos", 1)
        if isinstance(qos, bool) or qos not in (0, 1):
            raise InvalidArgument("field 'qos' must be 0 or 1")
        expiry = doc.get("expiry_s")
        if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, int)):
            raise InvalidArgument("field 'expiry_s' must be an integer")
        cfg = self._s.config.downlinks
        result = await send_downlink(
            self._registry,
            op.tenant_id,
            device_id,
            kind,
            doc["payload"],
            qos=int(qos),
            actor=op.actor,
            now=self._s.clock(),
            expiry_s=expiry,
            queue_max=cfg.queue_max,
            reply_wait_s=cfg.reply_wait_s,
        )
        return _json(result, status=202)

    # -- LwM2M -----------------------------------------------------------------------------------
    async def lwm2m_registration(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")

        async def read() -> dict[str, object]:
            reg = await self._lwm2m.registration(op.tenant_id, device_id)
            return reg.to_json()

        return _json(await self.audited_read(op, "lwm2m.get", f"device={device_id}", read()))

    async def lwm2m_models(self, request: web.Request) -> web.Response:
        """Every object the server knows (without resources): id, name, version, ..."""
        await self.operator(request)
        objects = [o.to_json(resources=False) for o in self._lwm2m.model.objects()]
        return _json({"objects": objects})

    async def lwm2m_model(self, request: web.Request) -> web.Response:
        """One object's definition with its resources."""
        await self.operator(request)
        text = request.match_info["object_id"]
        if not text.isascii() or not text.isdigit() or len(text) > 5:
            raise InvalidArgument("object id is a number 0-65534")
        obj = self._lwm2m.model.object(int(text))
        if obj is None:
            raise NotFound(f"no model of object {int(text)}", reason="unknown object")
        return _json(obj.to_json())

    async def lwm2m_call(self, request: web.Request) -> web.Response:
        """Read / Write / Execute / Observe / Cancel-Observe / Discover on the device."""
        op = await self.operator(request)
        device_id = check_text(request.match_info["device_id"], "device id")
        operation = request.path.rsplit("/", 1)[-1]
        body = await read_body(request, self._limit)
        params = parse_json_object(body, allowed=PARAM_FIELDS)
        path = params.get("path")
        paths = params.get("paths")
        if isinstance(paths, list) and not isinstance(path, str):  # a composite operation
            path = ",".join(p for p in paths[:8] if isinstance(p, str))[:200]
        target = f"device={device_id} path={path if isinstance(path, str) else ''}"
        result = await self.audited_read(
            op,
            f"lwm2m.{operation}",
            target,
            self._lwm2m.call(op.tenant_id, device_id, operation, params),
        )
        # A sleeping queue-mode device: accepted, the result comes later.
        return _json(result, status=202 if result.get("status") == "queued" else 200)

    async def lwm2m_request(self, request: web.Request) -> web.Response:
        """A queued LwM2M request: its state and, once finished, the device's answer."""
        op = await self.operator(request)
        request_id = request.match_info["request_id"]
        if not _REQUEST_ID_RE.fullmatch(request_id):
            raise NotFound("no such queued request")
        return _json(
            await self.audited_read(
                op,
                "lwm2m.request",
                f"request={request_id}",
                self._lwm2m.queued(op.tenant_id, request_id),
            )
        )

    async def lwm2m_events(self, request: web.Request) -> web.StreamResponse:
        """The tenant's LwM2M events as Server-Sent Events, from after ``Last-Event-ID`` (header
        or ``last_event_id``; ``0``: from the oldest kept), else only new ones."""
        op = await self.operator(request)
        device_id = request.query.get("device_id")
        if device_id is not None:
            check_device_id(device_id)
        resume = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        after = (
            check_event_id(resume)
            if resume is not None
            else await self._events.newest_id(op.tenant_id)
        )
        await self._registry._audit(
            op.actor, op.tenant_id, "lwm2m.events", f"device={device_id or '*'}", "OK"
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            while not self._closing.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                after, events = await self._events.read(
                    op.tenant_id, after, device_id=device_id, block_ms=1000
                )
                for event_id, event in events:
                    await response.write(sse_frame(event_id, event))
                if events:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= SSE_KEEPALIVE_S:
                    await response.write(SSE_KEEPALIVE)
                    quiet_since = loop.time()
        except (ConnectionError, IngressError):
            pass  # the client left, or Redis did: the client resumes with Last-Event-ID
        return response

    # -- firmware update (LwM2M object 5) ---------------------------------------------------
    async def firmware_upload(self, request: web.Request) -> web.Response:
        """The image as the body (application/octet-stream), ``name`` and ``version`` in the
        query; up to ``lwm2m.firmware_max_bytes`` (413 beyond)."""
        op = await self.operator(request)
        if request.content_type != "application/octet-stream":
            raise UnsupportedMediaType("send the image as application/octet-stream")
        name = request.query.get("name", "")
        version = request.query.get("version", "")
        body = await read_body(
            request.clone(client_max_size=self._firmware_max), self._firmware_max
        )
        image = await self._firmware.upload(op.tenant_id, name, version, body)
        await self._registry._audit(
            op.actor, op.tenant_id, "lwm2m.firmware.upload", f"image={image['image_id']}", "OK"
        )
        return _json(image, status=201)

    async def firmware_images(self, request: web.Request) -> web.Response:
        op = await self.operator(request)
        return _json(
            await self.audited_read(
                op, "lwm2m.firmware.list", "images", self._firmware.images(op.tenant_id)
            )
        )

    async def firmware_update(self, request: web.Request) -> web.Response:
        """Start updating ``device_ids`` to the image, by ``method`` pull or push."""
        op = await self.operator(request)
        image_id = request.match_info["image_id"]
        if not _IMAGE_ID_RE.fullmatch(image_id):
            raise NotFound("no such firmware image")
        doc = parse_json_object(await read_body(request, self._limit), allowed=_UPDATE_FIELDS)
        devices = doc.get("device_ids")
        if not isinstance(devices, list):
            raise InvalidArgument("device_ids is a list of device ids")
        campaign = await self.audited_read(
            op,
            "lwm2m.firmware.update",
            f"image={image_id}",
            self._firmware.start(op.tenant_id, image_id, devices, doc.get("method", "pull")),
        )
        return _json(campaign, status=201)

    async def firmware_campaign(self, request: web.Request) -> web.Response:
        """A campaign: jobs per status and each device's job."""
        op = await self.operator(request)
        campaign_id = request.match_info["campaign_id"]
        if not _CAMPAIGN_ID_RE.fullmatch(campaign_id):
            raise NotFound("no such firmware campaign")
        return _json(
            await self.audited_read(
                op,
                "lwm2m.firmware.campaign",
                f"campaign={campaign_id}",
                self._firmware.campaign(op.tenant_id, campaign_id),
            )
        )
