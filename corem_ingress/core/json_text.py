"""Strict JSON: what we take from devices and operators, every consumer of the uplink
stream can decode again.

``json.loads`` accepts more than JSON consumers do: ``NaN``/``Infinity``, numbers that
overflow a double (``1e999`` becomes ``inf``, written back as ``Infinity``), and lone
surrogate escapes (``"\\ud800"``: a string with no UTF-8 encoding, which breaks ``jq``
and every strict decoder of the stream), and it nests as deep as the stack allows. All of
these are refused here, with the reason. Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]

#: Deeper arrays/objects are refused (consumers recurse too).
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonTextError(ValueError):
    """Not strict JSON; ``reason`` completes "the body/payload ..." (never quotes the input)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(_name: str) -> JsonValue:
    raise JsonTextError("is not valid JSON (NaN and Infinity are not JSON)")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999 parses as inf, which has no JSON form
        raise JsonTextError("holds a number out of range")
    return value


#: One decoder (``json.loads`` with options builds a new one per call). Floats are checked
#: as they are parsed: cheaper than scanning every text for a long exponent.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
#: Its scanner (set by JSONDecoder.__init__; not in the type stubs).
_SCAN: Callable[[str, int], tuple[JsonValue, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def loads(data: str | bytes) -> JsonValue:
    """Parse strict JSON (bytes must be UTF-8); JsonTextError otherwise."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonTextError("is not valid UTF-8") from None
        return loads_decoded(text)
    # A str from elsewhere may hold raw surrogates (UTF-8 decoding never yields one).
    if _SURROGATE.search(data) is not None:
        raise JsonTextError("contains a lone surrogate (\\ud800-\\udfff): not Unicode text")
    return loads_decoded(data)


def loads_decoded(text: str) -> JsonValue:
    """``loads`` of text decoded from UTF-8 (so holding no raw surrogate)."""
    try:
        value: JsonValue
        try:
            # The scanner alone: JSONDecoder.decode's whitespace matches around it cost
            # more than the scan of a small payload. Text it does not consume whole
            # (surrounding whitespace, extra data, an error) takes the full path, which
            # accepts or refuses it exactly as before.
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except JsonTextError:
        raise
    except RecursionError:
        raise JsonTextError(f"nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, and integers longer than Python converts
        raise JsonTextError("is not valid JSON") from None
    # The walk below only when the text could hold what it looks for (a \u escape: a lone
    # surrogate?; many brackets: too deep?): most payloads skip it.
    if "\\u" in text or text.count("[") + text.count("{") > MAX_DEPTH:
        check(value)
    return value


def check(value: JsonValue) -> None:
    """Refuse what ``loads`` refuses, in an already parsed value (no recursion)."""
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                raise JsonTextError("contains a lone surrogate (\\ud800-\\udfff): not Unicode text")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonTextError("holds a number out of range")
        elif isinstance(item, dict | list):
            if depth + 1 > MAX_DEPTH:
                raise JsonTextError(f"nests deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
