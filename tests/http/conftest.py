"""HTTP fixtures: a node with the HTTP listener on a free port, operator tokens for two
tenants, and a client whose every response is checked against the OpenAPI document."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest

from corem_ingress import devcerts
from corem_ingress.adapters import http
from corem_ingress.adapters.http import openapi
from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.core.proof import sign_challenge

TENANTS = ("acme", "globex")
DOC = openapi.document()


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    template: str = ""

    @property
    def error_code(self) -> str:
        return str(self.body["error"]["code"])


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    rx = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rx)


# Literal templates first (the server routes /devices/certs before /devices/{device_id}).
_TEMPLATES = sorted(DOC["paths"], key=lambda t: (t.count("{"), t))


def match_template(path: str, method: str) -> str | None:
    for template in _TEMPLATES:
        if method.lower() in DOC["paths"][template] and _template_regex(template).fullmatch(path):
            return template
    return None


def check_against_spec(method: str, path: str, reply: Reply) -> None:
    """The status is documented for the operation and the body matches its schema."""
    template = match_template(path.split("?")[0], method)
    if template is None:
        # Not an API route: the router's JSON 404/405.
        assert reply.status in (404, 405), (method, path, reply.status)
        assert set(reply.body) == {"error"}
        return
    reply.template = template
    op = DOC["paths"][template][method.lower()]
    responses = op["responses"]
    assert str(reply.status) in responses, (
        f"{method} {template}: status {reply.status} not in the OpenAPI document: {reply.body}"
    )
    resp = responses[str(reply.status)]
    if "$ref" in resp:
        resp = DOC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(
        {"components": DOC["components"], **schema}, validate_formats=True
    )
    errors = [e.message for e in validator.iter_errors(reply.body)]
    assert not errors, f"{method} {template} {reply.status}: {errors} in {reply.body}"
    for name in resp.get("headers", {}):
        assert name in reply.headers, f"{method} {template} {reply.status}: no {name} header"


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str
    tokens: dict[str, str]
    admin_base: str = ""
    seen: list[Reply] = field(default_factory=list)

    async def request(
        self,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
        admin: bool | None = None,
        **kwargs: Any,
    ) -> Reply:
        hdrs = dict(headers or {})
        if tenant is not None:
            hdrs["Authorization"] = f"Bearer {self.tokens[tenant]}"
        is_admin = admin if admin is not None else not path.endswith("/uplink")
        base = self.admin_base if is_admin and self.admin_base else self.base
        async with self.session.request(method, base + path, headers=hdrs, **kwargs) as resp:
            text = await resp.text()
            assert resp.content_type == "application/json", (resp.status, text[:200])
            reply = Reply(resp.status, await resp.json(), resp.headers)
        check_against_spec(method, path, reply)
        if reply.status >= 400:
            # A device's own failure (LwM2M, 502) also names the device's CoAP code.
            device = reply.status == 502 and reply.body["error"].get("code") == "DEVICE_ERROR"
            fields = {"code", "message", "coap_code"} if device else {"code", "message"}
            assert set(reply.body) == {"error"} and set(reply.body["error"]) == fields
        if reply.status == 401:
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.status < 500 or reply.status in (502, 503), reply.body
        self.seen.append(reply)
        return reply

    async def provision(
        self, tenant: str, hardware_id: str, kind: str = "api_key", **extra: Any
    ) -> dict[str, Any]:
        reply = await self.request(
            "POST",
            "/api/v1/devices",
            tenant=tenant,
            json={"hardware_id": hardware_id, "credential_kind": kind, **extra},
        )
        assert reply.status in (200, 201), reply.body
        return dict(reply.body)

    async def add_ca(self, tenant: str, ca: devcerts.Issued, **extra: Any) -> Reply:
        """``ca`` becomes a trust anchor of ``tenant``, through the API: a challenge, signed
        with the CA's key."""
        challenge = await self.request("POST", "/api/v1/challenges", tenant=tenant)
        assert challenge.status == 201, challenge.body
        text = challenge.body["challenge"]
        signature = base64.b64encode(sign_challenge(ca.key, text)).decode()
        reply = await self.request(
            "POST",
            "/api/v1/cas",
            tenant=tenant,
            json={
                "cert_pem": ca.cert_pem.decode(),
                "proof": {"challenge": text, "signature": signature},
                **extra,
            },
        )
        assert reply.status in (200, 201), reply.body
        return reply

    async def uplink(
        self,
        device_id: str,
        key: str | None,
        *,
        header: str = "x-api-key",
        body: Any = None,
        **kwargs: Any,
    ) -> Reply:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            if header == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers["X-API-Key"] = key
        if body is None and "data" not in kwargs:
            body = {"kind": "telemetry", "payload": {"t": 21.5}}
        if body is not None:
            kwargs["json"] = body
        return await self.request(
            "POST", f"/api/v1/devices/{device_id}/uplink", headers=headers, **kwargs
        )


@pytest.fixture
def operator_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    monkeypatch.delenv("COREM_HTTP_ADMIN_TOKENS", raising=False)
    tokens = {t: generate_token() for t in TENANTS}
    path = tmp_path / "admin-tokens"
    lines = ["# tenant:sha256[:name]"]
    lines += [f"{t}:{hash_token(tok)}:ops-{t}" for t, tok in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path, tokens


@pytest.fixture
async def http_node(start_node, operator_tokens, clock):  # type: ignore[no-untyped-def]
    path, _ = operator_tokens
    # These tests fail authentication on purpose, often: no throttle here (see test_limits.py).
    return await start_node(
        [http.build],
        clock=clock,
        http={"admin_tokens_file": str(path)},
        limits={"auth_fail_max": 0},
    )


@pytest.fixture
async def api(http_node, operator_tokens) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    listener = http_node.listeners[0]
    async with aiohttp.ClientSession() as session:
        yield Api(session, f"http://127.0.0.1:{listener.port}", operator_tokens[1])
