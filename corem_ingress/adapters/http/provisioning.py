"""Provisioning by claim over HTTP (docs/provisioning.md).

* device side, ``POST /api/v1/provisioning/claim``: the claim key (``ck_live_…``) as
  ``Authorization: Bearer`` or ``X-API-Key``, body ``{"hardware_id": …}``; 201 with the
  device's own credential (once), 200 when a retry re-issued it, 409 once it was used;
* admin side, ``/api/v1/claims``: create (the claim's secret returned once), list, get,
  revoke, with the operator token's tenant.

The claim key is resolved by the registry's claim lookup, never by the device resolver:
it opens this route and no other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from corem_ingress.adapters.http.bodies import (
    check_text,
    number_field,
    page_params,
    parse_json_object,
    read_body,
    text_field,
)
from corem_ingress.adapters.http.device_auth import api_key_from_headers
from corem_ingress.adapters.http.guard import AuthGuard
from corem_ingress.core.claims import ClaimKind
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.jitp import JitpTemplate
from corem_ingress.core.psk import parse_psk_hex
from corem_ingress.services import Services

if TYPE_CHECKING:
    from corem_ingress.adapters.http.admin import AdminApi

CLAIM_PROVISION = "/api/v1/provisioning/claim"
CLAIMS = "/api/v1/claims"
AUTO_PROVISION = "/api/v1/cas/{ca_fingerprint}/auto-provision"
CLAIM = "/api/v1/claims/{claim_id}"

_ENROL_FIELDS = frozenset({"hardware_id"})
_CREATE_FIELDS = frozenset(
    {"kind", "credential_kind", "max_uses", "expires_at", "expires_in_s", "psk_hex"}
)
_TEMPLATE_FIELDS = frozenset(
    {"hardware_id_from", "san_prefix", "metadata", "allow_certificate_rotation"}
)
_NO_STORE = {"Cache-Control": "no-store"}


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_NO_STORE)


class ProvisioningApi:
    """The device side: a claim asks for its device's own credential."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._guard = AuthGuard(services)
        self._limit = services.config.http.max_body_bytes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(CLAIM_PROVISION, self.enrol)

    async def enrol(self, request: web.Request) -> web.Response:
        registry = self._s.registry
        raw = api_key_from_headers(request.headers)
        resolved = await self._guard.authenticate(request, registry.resolve_claim_key, raw)
        cfg = self._s.config.provisioning
        await registry.check_provisioning_rate(
            resolved, per_claim=cfg.claim_rate_per_minute, per_tenant=cfg.tenant_rate_per_minute
        )
        doc = parse_json_object(await read_body(request, self._limit), allowed=_ENROL_FIELDS)
        hardware_id = text_field(doc, "hardware_id", required=True, max_len=128)
        assert hardware_id is not None
        enrolled = await registry.enrol(resolved, hardware_id)
        return _json(enrolled.to_json(), status=201 if enrolled.result.created else 200)


def _auto_provision_json(fingerprint: str, template: JitpTemplate | None) -> dict[str, object]:
    return {
        "ca_fingerprint": fingerprint,
        "auto_provision": template is not None,
        "template": template.to_json() if template is not None else None,
    }


class AutoProvisionApi:
    """The admin side of just-in-time provisioning: a tenant CA's ``auto_provision``."""

    def __init__(self, admin: AdminApi) -> None:
        self._admin = admin
        self._registry = admin.registry
        self._limit = admin.body_limit

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(AUTO_PROVISION, self.get)
        r.add_put(AUTO_PROVISION, self.put)
        r.add_delete(AUTO_PROVISION, self.delete)

    async def get(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        fp = check_text(request.match_info["ca_fingerprint"], "CA fingerprint")
        template = await self._admin.audited_read(
            op,
            "cas.auto_provision.get",
            f"fingerprint={fp}",
            self._registry.auto_provision_template(op.tenant_id, fp),
        )
        return _json(_auto_provision_json(fp, template))

    async def put(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        fp = check_text(request.match_info["ca_fingerprint"], "CA fingerprint")
        doc = parse_json_object(await read_body(request, self._limit), allowed=_TEMPLATE_FIELDS)
        template = JitpTemplate.from_json(doc)
        await self._registry.set_auto_provision(op.tenant_id, fp, template, actor=op.actor)
        return _json(_auto_provision_json(fp, template))

    async def delete(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        fp = check_text(request.match_info["ca_fingerprint"], "CA fingerprint")
        await self._registry.set_auto_provision(op.tenant_id, fp, None, actor=op.actor)
        return _json(_auto_provision_json(fp, None))


class ClaimsApi:
    """The admin side: a tenant's claims."""

    def __init__(self, admin: AdminApi) -> None:
        self._admin = admin
        self._registry = admin.registry
        self._limit = admin.body_limit
        self._clock = admin.clock

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        AutoProvisionApi(self._admin).add_routes(app)
        r.add_post(CLAIMS, self.create)
        r.add_get(CLAIMS, self.list)
        r.add_get(CLAIM, self.get)
        r.add_delete(CLAIM, self.revoke)

    async def create(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        doc = parse_json_object(await read_body(request, self._limit), allowed=_CREATE_FIELDS)
        kind = ClaimKind.parse(text_field(doc, "kind", max_len=16) or "api_key")
        credential_kind = CredentialKind.parse(
            text_field(doc, "credential_kind", max_len=16) or "api_key"
        )
        if "max_uses" not in doc:
            raise InvalidArgument("field 'max_uses' is required")
        max_uses = doc["max_uses"]
        if isinstance(max_uses, bool) or not isinstance(max_uses, int):
            raise InvalidArgument("field 'max_uses' must be an integer")
        expires_at = number_field(doc, "expires_at")
        expires_in = number_field(doc, "expires_in_s")
        if expires_at is not None and expires_in is not None:
            raise InvalidArgument("give expires_at or expires_in_s, not both")
        if expires_in is not None:
            expires_at = self._clock() + expires_in
        psk_hex = text_field(doc, "psk_hex", max_len=256)
        issued = await self._registry.create_claim(
            op.tenant_id,
            kind,
            credential_kind,
            max_uses=max_uses,
            expires_at=expires_at,
            actor=op.actor,
            psk_bytes=parse_psk_hex(psk_hex) if psk_hex is not None else None,
        )
        return _json(issued.to_json(self._clock()), status=201)

    async def list(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        limit, cursor = page_params(request)

        async def read() -> dict[str, object]:
            found, nxt = await self._registry.list_claims(op.tenant_id, limit=limit, cursor=cursor)
            now = self._clock()
            return {"claims": [c.to_json(now) for c in found], "next_cursor": nxt}

        target = f"cursor={cursor or ''}"
        return _json(await self._admin.audited_read(op, "claims.list", target, read()))

    async def get(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        claim_id = check_text(request.match_info["claim_id"], "claim id")
        claim = await self._admin.audited_read(
            op, "claims.get", f"claim={claim_id}", self._registry.get_claim(op.tenant_id, claim_id)
        )
        return _json(claim.to_json(self._clock()))

    async def revoke(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        claim_id = check_text(request.match_info["claim_id"], "claim id")
        claim = await self._registry.revoke_claim(op.tenant_id, claim_id, actor=op.actor)
        return _json(claim.to_json(self._clock()))
