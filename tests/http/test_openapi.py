"""The OpenAPI document: docs/openapi.json is the served document, every route is in it
and every operation in it is routed (both layouts: shared and separate admin listener)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corem_ingress.adapters import http
from corem_ingress.adapters.http import openapi
from corem_ingress.adapters.http.console import CONSOLE

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def routes_of(listener: Any) -> set[tuple[str, str]]:
    out = set()
    for spec in listener.apps:
        for route in spec.app.router.routes():
            if route.method == "HEAD":
                continue  # aiohttp adds HEAD to every GET
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            if path == CONSOLE or path.startswith(CONSOLE + "/"):
                continue  # the console's pages and files (HTML/JS/CSS): not the JSON API
            out.add((route.method.lower(), path))
    return out


def documented() -> set[tuple[str, str]]:
    doc = openapi.document()
    return {(m, p) for p, ops in doc["paths"].items() for m in ops}


@pytest.mark.unit
def test_docs_file_is_the_rendered_document() -> None:
    assert DOCS.read_bytes() == openapi.render(), (
        "docs/openapi.json is stale: run "
        "'.venv/bin/python -m corem_ingress.adapters.http openapi > docs/openapi.json'"
    )


async def test_served_document_is_the_docs_file_and_routes_match(
    start_node: Any, operator_tokens: Any
) -> None:
    path, _ = operator_tokens
    shared = await start_node([http.build], http={"admin_tokens_file": str(path)})
    split = await start_node(
        [http.build], http={"admin_tokens_file": str(path), "admin_mode": "separate"}
    )
    assert routes_of(shared.listeners[0]) == documented()
    assert routes_of(split.listeners[0]) == documented()
    listener = split.listeners[0]
    async with aiohttp.ClientSession() as session:
        for port in (shared.listeners[0].port, listener.port, listener.admin_port):
            url = f"http://127.0.0.1:{port}/api/v1/openapi.json"
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                assert await resp.read() == DOCS.read_bytes()


@pytest.mark.unit
def test_document_shape() -> None:
    doc = json.loads(DOCS.read_text())
    assert doc["openapi"] == "3.1.0"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["operationId"], (method, path)
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), (method, path)
            if path != openapi.OPENAPI_PATH:
                assert {"401", "503"} <= codes, (method, path)
    # The contract paths of DESIGN.md.
    contract = {
        ("post", "/api/v1/devices/{device_id}/uplink"),
        ("post", "/api/v1/devices/{device_id}/certs"),
        ("delete", "/api/v1/devices/certs/{fingerprint}"),
        ("get", "/api/v1/devices/certs"),
    }
    assert contract <= documented()
