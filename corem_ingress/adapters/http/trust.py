"""The admin API of a tenant's trust anchors: ``/api/v1/cas`` and proof-of-possession
challenges (``/api/v1/challenges``).

The tenant comes from the operator token, as everywhere in the admin API: another
tenant's CA is a 404 like one that does not exist. Adding a CA needs proof of possession
of its key (a CA certificate is public: without it any tenant could claim another's CA
and with it that CA's devices). Platform operators add CAs without a proof through the
CLI (``corem-ingress cas add``), which talks to Redis directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from corem_ingress.adapters.http.bodies import (
    check_text,
    page_params,
    parse_json_object,
    read_body,
    text_field,
)
from corem_ingress.core.errors import InvalidArgument, NotFound
from corem_ingress.core.proof import MAX_CSR_BYTES, Proof

if TYPE_CHECKING:
    from corem_ingress.adapters.http.admin import AdminApi

CAS = "/api/v1/cas"
CA = "/api/v1/cas/{ca_fingerprint}"
CHALLENGES = "/api/v1/challenges"

_ADD_CA_FIELDS = frozenset({"cert_pem", "proof", "require_device_proof"})
_PROOF_FIELDS = frozenset({"challenge", "signature", "csr_pem"})
_NO_STORE = {"Cache-Control": "no-store"}


def proof_field(doc: dict[str, Any], name: str = "proof") -> Proof | None:
    """``{"challenge", "signature"}`` or ``{"csr_pem"}``, or None when the field is absent."""
    if name not in doc:
        return None
    value = doc[name]
    if not isinstance(value, dict):  # null included: leave the field out instead
        raise InvalidArgument(f"field '{name}' must be an object")
    unknown = sorted(set(value) - _PROOF_FIELDS)
    if unknown:
        shown = ", ".join(repr(str(k)[:40]) for k in unknown[:5])
        raise InvalidArgument(f"field '{name}': unknown field(s): {shown}")
    csr = text_field(value, "csr_pem", max_len=MAX_CSR_BYTES)
    challenge = text_field(value, "challenge", max_len=256)
    signature = text_field(value, "signature", max_len=2048)
    if csr is not None:
        if challenge is not None or signature is not None:
            raise InvalidArgument(f"field '{name}': give either csr_pem or challenge and signature")
        return Proof.from_csr(csr)
    if challenge is None or signature is None:
        raise InvalidArgument(f"field '{name}': give either csr_pem or challenge and signature")
    return Proof.from_signature(challenge, signature)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_NO_STORE)


class TrustApi:
    def __init__(self, admin: AdminApi) -> None:
        self._admin = admin
        self._registry = admin.registry
        self._limit = admin.body_limit
        self._clock = admin.clock

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post(CHALLENGES, self.create_challenge)
        r.add_post(CAS, self.add_ca)
        r.add_get(CAS, self.list_cas)
        r.add_delete(CA, self.remove_ca)

    async def create_challenge(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        issued = await self._registry.new_challenge(op.tenant_id, actor=op.actor)
        return _json(issued.to_json(), status=201)

    async def add_ca(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        doc = parse_json_object(await read_body(request, self._limit), allowed=_ADD_CA_FIELDS)
        pem = text_field(doc, "cert_pem", required=True, max_len=self._limit)
        assert pem is not None
        require_device_proof = doc.get("require_device_proof", False)
        if not isinstance(require_device_proof, bool):  # null included
            raise InvalidArgument("field 'require_device_proof' must be a boolean")
        given = proof_field(doc)
        if given is None:
            raise InvalidArgument("field 'proof' is required: prove possession of the CA's key")
        record, added = await self._registry.add_ca(
            op.tenant_id,
            pem,
            actor=op.actor,
            proof_of_possession=given,
            require_proof=True,
            require_device_proof=require_device_proof,
        )
        return _json(record.to_json(self._clock()), status=201 if added else 200)

    async def list_cas(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        limit, cursor = page_params(request)

        async def page() -> dict[str, object]:
            records, nxt = await self._registry.list_cas(op.tenant_id, limit=limit, cursor=cursor)
            now = self._clock()
            return {"cas": [r.to_json(now) for r in records], "next_cursor": nxt}

        target = f"cursor={cursor or ''}"
        return _json(await self._admin.audited_read(op, "cas.list", target, page()))

    async def remove_ca(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        fingerprint = check_text(request.match_info["ca_fingerprint"], "CA fingerprint")
        if len(fingerprint) > 64:
            raise NotFound("CA not found")
        record = await self._registry.remove_ca(op.tenant_id, fingerprint, actor=op.actor)
        return _json(record.to_json(self._clock()))
