"""PROXY protocol headers (v1 text, v2 binary) and trusted proxies: pure, bytes in."""

from __future__ import annotations

import struct

import pytest

from corem_ingress.core.access import AccessPolicy
from corem_ingress.core.causes import Cause
from corem_ingress.core.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyPreamble,
    parse_header,
    starts_with_header,
    v2_header,
)
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.core.trusted_proxies import TrustedProxies

pytestmark = pytest.mark.unit

TLS_HELLO = b"\x16\x03\x01\x00\xc8\x01"
LB = "10.0.0.5"


def preamble(*, trusted: bool = True, required: bool = True) -> ProxyPreamble:
    return ProxyPreamble(LB, 40000, trusted=trusted, required=required)


def test_v2_ipv4_header_names_the_client_and_keeps_the_rest() -> None:
    header = v2_header(("203.0.113.7", 51234), ("10.0.0.9", 8883))
    assert len(header) == 16 + 12
    decided = preamble().feed(header + TLS_HELLO)
    assert decided is not None
    assert (decided.client, decided.port, decided.proxied) == ("203.0.113.7", 51234, True)
    assert decided.rest == TLS_HELLO


def test_v2_ipv6_and_mapped_ipv4() -> None:
    h = parse_header(v2_header(("2001:db8::1", 1), ("2001:db8::2", 2)))
    assert h is not None and h.source == ("2001:db8::1", 1)
    mapped = parse_header(v2_header(("::ffff:198.51.100.4", 3), ("::1", 4)))
    assert mapped is not None and mapped.source == ("198.51.100.4", 3)


def test_v2_header_byte_by_byte() -> None:
    data = v2_header(("192.0.2.1", 1000), ("192.0.2.2", 2000)) + TLS_HELLO
    p = preamble()
    decided = None
    for i in range(len(data)):
        decided = p.feed(data[i : i + 1])
        if decided is not None:
            break
    assert decided is not None and decided.client == "192.0.2.1"
    assert decided.rest == b""  # decided on the header's last byte


def test_v2_local_command_is_the_proxy_itself() -> None:
    decided = preamble().feed(v2_header(None, ("0.0.0.0", 0)) + TLS_HELLO)
    assert decided is not None
    assert (decided.client, decided.proxied, decided.rest) == (LB, True, TLS_HELLO)


def test_v2_tlvs_are_skipped() -> None:
    block = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 5, 6)
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    header = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(block + tlv)) + block + tlv
    decided = preamble().feed(header + b"x")
    assert decided is not None and decided.client == "192.0.2.1" and decided.rest == b"x"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12), "version"),
        (V2_SIGNATURE + bytes([0x2F, 0x11]) + struct.pack("!H", 12) + bytes(12), "command"),
        (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4), "truncated"),
        (V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 12) + bytes(12), "truncated"),
        (V2_SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + bytes(12), "stream"),
        (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000), "too long"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n", "address"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n", "match"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n", "port"),
        (b"PROXY TCP4 " + b"1" * 120, "CRLF"),
    ],
)
def test_malformed_headers_are_refused(header: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        preamble().feed(header)


def test_a_truncated_header_waits_for_more() -> None:
    full = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2))
    for cut in (1, 11, 12, 15, 16, len(full) - 1):
        assert preamble().feed(full[:cut]) is None, cut
    assert preamble().feed(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r") is None


def test_v1_as_nginx_sends_it() -> None:
    decided = preamble().feed(b"PROXY TCP4 198.51.100.9 10.0.0.5 40001 8883\r\n" + TLS_HELLO)
    assert decided is not None and (decided.client, decided.port) == ("198.51.100.9", 40001)
    assert decided.rest == TLS_HELLO
    v6 = preamble().feed(b"PROXY TCP6 2001:db8::7 2001:db8::1 5 6\r\nGET")
    assert v6 is not None and v6.client == "2001:db8::7" and v6.rest == b"GET"
    unknown = preamble().feed(b"PROXY UNKNOWN\r\nGET")
    assert unknown is not None and unknown.client == LB


def test_untrusted_source_with_a_header_is_refused() -> None:
    with pytest.raises(ProxyHeaderError, match="not a trusted proxy"):
        preamble(trusted=False).feed(v2_header(("192.0.2.1", 1), ("192.0.2.2", 2)))
    with pytest.raises(ProxyHeaderError, match="not a trusted proxy"):
        preamble(trusted=False).feed(b"PROXY TCP4 ")


def test_untrusted_source_without_a_header_is_itself() -> None:
    decided = preamble(trusted=False).feed(TLS_HELLO)
    assert decided is not None and (decided.client, decided.proxied) == (LB, False)
    # HTTP methods that start like "PROXY " are told apart after a few bytes.
    p = preamble(trusted=False)
    assert p.feed(b"P") is None
    d = p.feed(b"OST /x HTTP/1.1\r\n")
    assert d is not None and d.rest.startswith(b"POST")


def test_trusted_proxy_without_a_header() -> None:
    with pytest.raises(ProxyHeaderError, match="required"):
        preamble(required=True).feed(TLS_HELLO)
    decided = preamble(required=False).feed(TLS_HELLO)
    assert decided is not None and decided.client == LB and not decided.proxied


def test_starts_with_header() -> None:
    assert starts_with_header(b"") is None
    assert starts_with_header(b"\r\n\r\n") is None
    assert starts_with_header(b"PROX") is None
    assert starts_with_header(b"PROXY ") is True
    assert starts_with_header(V2_SIGNATURE) is True
    assert starts_with_header(b"\x16") is False
    assert starts_with_header(b"PUT ") is False


def test_trusted_proxies_and_forwarded_for() -> None:
    trusted = TrustedProxies(["10.0.0.0/24", "2001:db8:1::/48"])
    assert "10.0.0.5" in trusted and "::ffff:10.0.0.5" in trusted
    assert "10.0.1.5" not in trusted and "2001:db8:1::9" in trusted and "junk" not in trusted
    assert not TrustedProxies() and "10.0.0.5" not in TrustedProxies()
    xff = trusted.client_from_forwarded_for
    assert xff("10.0.0.5", ["198.51.100.1"]) == "198.51.100.1"
    # The rightmost untrusted hop: a client cannot prepend a made-up address.
    assert xff("10.0.0.5", ["1.1.1.1, 198.51.100.1, 10.0.0.7"]) == "198.51.100.1"
    assert xff("10.0.0.5", ["1.1.1.1", "198.51.100.1"]) == "198.51.100.1"
    assert xff("10.0.0.5", ["10.0.0.8, 10.0.0.7"]) == "10.0.0.8"
    assert xff("10.0.0.5", []) == "10.0.0.5"
    # Not from a trusted proxy: ignored.
    assert xff("192.0.2.1", ["198.51.100.1"]) == "192.0.2.1"
    for bad in (["nonsense"], ["1.2.3.4:80"], ["1.2.3.4,,5.6.7.8"], [",".join(["1.1.1.1"] * 40)]):
        with pytest.raises(ValueError):
            xff("10.0.0.5", bad)
    with pytest.raises(ValueError, match="entry 2"):
        TrustedProxies(["10.0.0.0/8", "10.0.0.0/33"])


def test_trusted_proxy_address_is_never_throttled() -> None:
    """UDP through nginx, or a PROXY LOCAL connection, stands for every client behind it."""
    policy = AccessPolicy(
        throttle=AuthThrottle(max_failures=2, window_s=60, block_s=300),
        trusted_proxies=TrustedProxies(["10.0.0.5/32"]),
    )
    for now in range(5):
        assert not policy.auth_failed(LB, Cause.UNKNOWN_OR_REVOKED, float(now))
        assert not policy.auth_failed("198.51.100.1", Cause.UNKNOWN_OR_REVOKED, float(now)) or (
            now == 1
        )
    assert policy.check_source(LB, 5.0) is None
    refusal = policy.check_source("198.51.100.1", 5.0)
    assert refusal is not None and refusal.retry_after_s == 296
