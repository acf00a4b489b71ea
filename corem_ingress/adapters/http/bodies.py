"""Request bodies and query strings: bounded reads, strict JSON, typed fields.

Every problem is an InvalidArgument (400) or PayloadTooLarge (413) whose message
names the field, never the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from corem_ingress.adapters.http import openapi
from corem_ingress.adapters.http.errors import PayloadTooLarge
from corem_ingress.core import json_text
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.json_text import JsonValue
from corem_ingress.store.registry.records import MAX_PAGE

_CURSOR_RE = re.compile(r"[0-9]{1,12}")
_LIMIT_RE = re.compile(r"[0-9]{1,4}")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 beyond ``limit`` bytes (declared or sent)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    # The application's client_max_size is the same limit: a chunked body that grows past it
    # raises HTTPRequestEntityTooLarge, which the error middleware renders as this 413.
    body = await request.read()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return body


def parse_json(body: bytes) -> JsonValue:
    """Strict JSON (``core/json_text.py``: UTF-8; no NaN, Infinity, overflowing numbers or lone
    surrogates; bounded nesting); any failure is a 400."""
    try:
        return json_text.loads(body)
    except json_text.JsonTextError as exc:
        raise InvalidArgument(f"request body {exc.reason}") from None


def parse_json_object(
    body: bytes, *, allowed: frozenset[str], empty_ok: bool = False
) -> dict[str, Any]:
    """A JSON object with only the ``allowed`` keys; an empty body is ``{}`` if ``empty_ok``."""
    if empty_ok and not body.strip():
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise InvalidArgument("request body must be a JSON object")
    if value.keys() <= allowed:  # the usual case: no set built, nothing sorted
        return value
    unknown = sorted(set(value) - allowed)
    if unknown:
        # Field names are the client's own input, but short and not secret; still, cap them.
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidArgument(f"unknown field(s): {shown}")
    return value


def text_field(
    doc: dict[str, Any], name: str, *, required: bool = False, max_len: int = 1024
) -> str | None:
    if name not in doc:
        if required:
            raise InvalidArgument(f"field '{name}' is required")
        return None
    value = doc[name]
    if not isinstance(value, str):  # null included: leave the field out instead
        raise InvalidArgument(f"field '{name}' must be a string")
    if len(value) > max_len:
        raise InvalidArgument(f"field '{name}' is longer than {max_len} characters")
    check_text(value, f"field '{name}'")
    return value


def check_text(value: str, what: str) -> str:
    """Refuse strings that cannot be UTF-8 encoded (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text") from None
    return value


def number_field(doc: dict[str, Any], name: str) -> float | None:
    if name not in doc:
        return None
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int | float):  # null too
        raise InvalidArgument(f"field '{name}' must be a number")
    number = float(value) if isinstance(value, float) else _int_as_float(value, name)
    if not math.isfinite(number):
        raise InvalidArgument(f"field '{name}' must be a finite number")
    return number


def _int_as_float(value: int, name: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(f"field '{name}' is out of range") from None


def query_checker() -> Callable[[web.Request], None]:
    """Query strings as strict as the OpenAPI document: a parameter it does not list for the
    route, or one given twice, is a 400 (not silently ignored). Runs in the one middleware
    (``errors.middleware``), before any handler."""
    allowed_by_route = openapi.query_parameters()

    def check_query(request: web.Request) -> None:
        # No '?' in the request target: no query string, and nothing to parse (the device
        # uplink's case).
        if "?" not in request.raw_path:
            return
        query = request.query
        if query:
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else ""
            allowed = allowed_by_route.get((request.method, template), frozenset())
            unknown = sorted(set(query) - allowed)
            if unknown:
                shown = ", ".join(repr(k[:40]) for k in unknown[:5])
                raise InvalidArgument(f"unknown query parameter(s): {shown}")
            if len(query) != len(set(query)):
                raise InvalidArgument("a query parameter is given more than once")

    return check_query


def page_params(request: web.Request, *, default_limit: int = 100) -> tuple[int, str | None]:
    """``limit`` (1..500) and ``cursor`` (opaque; digits) from the query string."""
    raw_limit = request.query.get("limit")
    limit = default_limit
    if raw_limit is not None:
        if not _LIMIT_RE.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer between 1 and {MAX_PAGE}")
        limit = int(raw_limit)
    cursor = request.query.get("cursor")
    if cursor is not None and not _CURSOR_RE.fullmatch(cursor):  # empty too: leave it out
        raise InvalidArgument("cursor is not valid")
    return limit, cursor
