"""Request bodies and query strings: bounded reads, strict JSON, typed fields.

Every problem is an InvalidArgument (400) or PayloadTooLarge (413) whose message
names the field, never the value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from corem_ingress.adapters.http.errors import PayloadTooLarge
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.uplink import JsonValue
from corem_ingress.store.registry.records import MAX_PAGE

_CURSOR_RE = re.compile(r"[0-9]{1,12}")
_LIMIT_RE = re.compile(r"[0-9]{1,4}")
#: Deeper JSON is refused: consumers of the stream must be able to decode what we store.
MAX_JSON_DEPTH = 64


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which has no JSON form
        raise ValueError("number out of range")
    return value


def parse_json(body: bytes) -> JsonValue:
    """Strict JSON (UTF-8; no NaN or Infinity); any failure is a 400."""
    try:
        text = body.decode("utf-8")
        value: JsonValue = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and over-long integers.
        raise InvalidArgument("request body is not valid JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidArgument(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: JsonValue) -> int:
    """Nesting depth of arrays and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[JsonValue] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json_object(
    body: bytes, *, allowed: frozenset[str], empty_ok: bool = False
) -> dict[str, Any]:
    """A JSON object with only the ``allowed`` keys; an empty body is ``{}`` if ``empty_ok``."""
    if empty_ok and not body.strip():
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise InvalidArgument("request body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        # Field names are the client's own input, but short and not secret; still, cap them.
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InvalidArgument(f"unknown field(s): {shown}")
    return value


def text_field(
    doc: dict[str, Any], name: str, *, required: bool = False, max_len: int = 1024
) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidArgument(f"field '{name}' is required")
        return None
    if not isinstance(value, str):
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
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
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


def page_params(request: web.Request, *, default_limit: int = 100) -> tuple[int, str | None]:
    """``limit`` (1..500) and ``cursor`` (opaque; digits) from the query string."""
    raw_limit = request.query.get("limit")
    limit = default_limit
    if raw_limit is not None:
        if not _LIMIT_RE.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer between 1 and {MAX_PAGE}")
        limit = int(raw_limit)
    cursor = request.query.get("cursor")
    if cursor is not None and cursor != "" and not _CURSOR_RE.fullmatch(cursor):
        raise InvalidArgument("cursor is not valid")
    return limit, (cursor or None)
