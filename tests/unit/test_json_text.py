"""Strict JSON for everything that reaches the uplink stream (issue 12 §4: a lone surrogate
was stored and broke every JSON consumer). Pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corem_ingress.core import json_text
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.uplink import payload_from_bytes
from corem_ingress.lwm2m.content import CF_SENML_JSON, decode

pytestmark = pytest.mark.unit

REFUSED = [
    (b'"\\ud800"', "surrogate"),
    (b'{"k": ["ok", "\\udfff x"]}', "surrogate"),
    (b'{"\\ud83d": 1}', "surrogate"),  # in a key
    (b"NaN", "NaN"),
    (b"[1, -Infinity]", "NaN"),
    (b'{"t": 1e999}', "out of range"),
    (b"[" + b"1" * 320 + b".5]", "out of range"),
    (b"[" * 65 + b"]" * 65, "deeper"),
    (b"[" * 5000 + b"]" * 5000, "deeper"),
    (b"\xff\xfe", "UTF-8"),
    (b"{bad", "not valid JSON"),
]


@pytest.mark.parametrize(("data", "reason"), REFUSED)
def test_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(json_text.JsonTextError, match=reason):
        json_text.loads(data)


def test_accepted_values_round_trip_as_utf8_json() -> None:
    for text in ('"\\ud83d\\ude00"', '{"a": [1, 2.5, "\\u00e9"]}', "[" * 64 + "]" * 64, "1e308"):
        value = json_text.loads(text)
        again = json.dumps(value, ensure_ascii=False).encode("utf-8")  # must not raise
        assert json.loads(again) == value
    assert json_text.loads('"\\ud83d\\ude00"') == "\U0001f600"  # a proper pair is fine


def test_binary_transports_keep_such_payloads_as_text() -> None:
    """MQTT and CoAP never refuse a payload: JSON only to Python is stored as its text."""
    for raw in (b'{"v": "\\ud800"}', b"NaN", b'{"t": 1e999}'):
        value, encoding = payload_from_bytes(raw)
        assert (value, encoding) == (raw.decode(), "text")
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert payload_from_bytes(b'{"v": "\\u00e9"}') == ({"v": "é"}, "json")
    assert payload_from_bytes(b"\xff") == ("/w==", "base64")


def test_lwm2m_senml_json_string_with_a_lone_surrogate_is_4_00() -> None:
    payload = b'[{"bn": "/3/0/", "n": "0", "vs": "\\ud800"}]'
    with pytest.raises(InvalidArgument, match="surrogate"):
        decode(payload, CF_SENML_JSON, "/3/0", now=0.0)


# -- issue 18: the scanner-first parse and the prebuilt encoder keep the same results ---------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _full_path(text: str) -> object:
    """What ``loads_decoded`` did before: ``JSONDecoder.decode`` and the walk."""
    try:
        value = json_text._DECODER.decode(text)
        json_text.check(value)
    except (ValueError, RecursionError) as exc:
        return type(exc)
    return value


def _fast_path(text: str) -> object:
    try:
        return json_text.loads_decoded(text)
    except json_text.JsonTextError:
        return ValueError  # JsonTextError is one; the full path's errors map to it


@settings(max_examples=300, deadline=None)
@given(_json_values, st.sampled_from(["", " ", "\n", "\t "]), st.sampled_from(["", " ", "x", "1"]))
def test_scanner_first_parse_accepts_and_refuses_as_decode(
    value: object, before: str, after: str
) -> None:
    for text in (
        json.dumps(value),
        json.dumps(value, separators=(",", ":")),
        before + json.dumps(value, indent=1) + after,
    ):
        expected = _full_path(text)
        assert _fast_path(text) == (ValueError if isinstance(expected, type) else expected)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_scanner_first_parse_of_any_text(text: str) -> None:
    if json_text._SURROGATE.search(text):
        return  # loads_decoded's input is decoded UTF-8: never holds one
    expected = _full_path(text)
    assert _fast_path(text) == (ValueError if isinstance(expected, type) else expected)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_stream_payload_text_is_json_dumps_compact(value: object) -> None:
    from corem_ingress.store.uplink_batcher import _json_text

    assert _json_text(value) == json.dumps(value, separators=(",", ":"))  # type: ignore[arg-type]
