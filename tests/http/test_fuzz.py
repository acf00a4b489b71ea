"""Property-based fuzzing of both APIs from the OpenAPI document (schemathesis + hypothesis).

Every operation gets positive cases (valid per the document: the response must be a
documented status, content type, headers and schema) and negative cases (invalid per the
document: no 5xx, and the server must refuse them -- schemathesis' "schema-violating
request accepted" check, ``negative_data_rejection``: the server is as strict as its
document; 503 excepted since Redis is up here and none may occur). Requests go with no
credential, the right tenant's token or device key, or another tenant's; path ids are real
ones half of the time so the handlers run, not only the 404s.
Bounded and derandomized: the same inputs on every run.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation

from corem_ingress import devcerts
from corem_ingress.adapters import http
from corem_ingress.adapters.http import openapi, openapi_console

from .conftest import Api

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
#: The console's read routes (a few query parameters each, no body): fewer cases suffice.
CONSOLE_EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 6}
CONSOLE_PATHS = frozenset(openapi_console.paths())
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection]


def _headers_mutated(case: Any) -> bool:
    components = case.meta.components if case.meta is not None else {}
    header = components.get(ParameterLocation.HEADER)
    return header is not None and header.mode is GenerationMode.NEGATIVE


def _event_stream_paths() -> frozenset[str]:
    """Routes that answer 200 with a Server-Sent Events stream (it never ends by itself)."""
    return frozenset(
        path
        for path, ops in openapi.document()["paths"].items()
        for op in ops.values()
        if "text/event-stream" in op["responses"].get("200", {}).get("content", {})
    )


class StreamAwareSession(requests.Session):
    """A 200 event stream is left once its headers arrived: its status and content type are
    then checked like any answer's, with an empty body (a refusal is a whole JSON answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = _event_stream_paths()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        path = requests.utils.urlparse(str(url)).path
        if path not in self.streams:
            return super().request(method, url, *args, **kwargs)
        kwargs["stream"] = True
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 200:
            response.close()
            response._content = b""
        return response


def fuzz(base: str, tokens: dict[str, str], real: dict[str, str]) -> int:
    """Run every operation in both modes; returns the number of requests sent."""
    schema = schemathesis.openapi.from_dict(openapi.document())
    session = StreamAwareSession()
    sent = 0
    unsatisfiable: list[str] = []
    statuses: defaultdict[tuple[str, str, str], Counter[int]] = defaultdict(Counter)

    def headers_for(op: Any, who: str) -> dict[str, str]:
        if who == "none":
            return {}
        device_api = op.path.endswith("/uplink")
        if device_api:
            key = real["api_key"] if who == "own" else tokens["acme"]
            return {"X-API-Key": key} if who == "own" else {"Authorization": f"Bearer {key}"}
        tenant = "acme" if who == "own" else "globex"
        return {"Authorization": f"Bearer {tokens[tenant]}"}

    def substitute(op: Any, case: Any) -> None:
        params = case.path_parameters or {}
        ids = dict(real)
        if "/psk" in op.path:
            ids["device_id"] = real["psk_device"]
        elif op.path.endswith("/certs"):
            ids["device_id"] = real["x509_device"]
        for name, value in ids.items():
            if name in params:
                params[name] = value

    def run(op: Any, mode: GenerationMode) -> None:
        checks: list[Callable[..., Any]] = (
            POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS
        )

        @settings(
            max_examples=(CONSOLE_EXAMPLES if op.path in CONSOLE_PATHS else EXAMPLES)[mode],
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=op.as_strategy(generation_mode=mode),
            who=st.sampled_from(["own", "own", "other", "none"]),
            use_real_ids=st.booleans(),
        )
        def one(case: Any, who: str, use_real_ids: bool) -> None:
            nonlocal sent
            if use_real_ids:
                substitute(op, case)
            if mode is GenerationMode.NEGATIVE and _headers_mutated(case):
                # The credential headers are what a negative case made invalid (e.g. left
                # out): adding ours would make the request valid again.
                who = "none"
            headers = headers_for(op, who)
            response = case.call(base_url=base, session=session, headers=headers, timeout=30)
            sent += 1
            statuses[(op.method, op.path, mode.value)][response.status_code] += 1
            assert response.status_code < 500, (response.status_code, response.text[:300])
            case.validate_response(response, checks=checks, headers=headers)

        try:
            one()
        except Unsatisfiable:
            # Negative mode for an operation with nothing to get wrong (no parameter, no body).
            assert mode is GenerationMode.NEGATIVE and not op.path_parameters and not op.body
            unsatisfiable.append(f"{op.method} {op.path}")

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(op, mode)
    session.close()
    for (method, path, mode), counts in sorted(statuses.items()):
        print(f"{method.upper():6} {path:52} {mode:8} {dict(sorted(counts.items()))}")
    assert unsatisfiable == [f"get {openapi.OPENAPI_PATH}"], unsatisfiable
    return sent


# Every operation of the document, 60 cases each: 108 s on main under a load average of 8,
# past 120 s with the six LwM2M operations of issue 15 (events, queued requests, firmware).
@pytest.mark.timeout(240)
async def test_fuzz_both_apis_from_the_openapi_document(
    start_node: Any, operator_tokens: Any
) -> None:
    path, tokens = operator_tokens
    node = await start_node(
        [http.build], http={"admin_tokens_file": str(path)}, limits={"auth_fail_max": 0}
    )
    base = f"http://127.0.0.1:{node.listeners[0].port}"
    ca = devcerts.make_ca()
    cert = devcerts.issue(ca, "fuzz")
    async with aiohttp.ClientSession() as session:
        api = Api(session, base, tokens)
        await api.add_ca("acme", ca)
        key_dev = await api.provision("acme", "fuzz-key")
        x_dev = await api.provision("acme", "fuzz-x509", "x509", cert_pem=cert.cert_pem.decode())
        psk_dev = await api.provision("acme", "fuzz-psk", "psk")
    real = {
        "device_id": key_dev["device_id"],
        "key_id": key_dev["key_id"],
        "fingerprint": cert.fingerprint,
        "ca_fingerprint": ca.fingerprint,
        "api_key": key_dev["api_key"],
        "x509_device": x_dev["device_id"],
        "psk_device": psk_dev["device_id"],
    }
    # Blocking client in a thread; the server runs on this loop meanwhile.
    sent = await asyncio.to_thread(fuzz, base, tokens, real)
    assert sent >= 13 * 20
