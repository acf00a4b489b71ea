"""The LwM2M bootstrap server's requests (lwm2m/bootstrap.py), pure."""

from __future__ import annotations

import base64
import json

import pytest

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.bootstrap import bootstrap_steps, endpoint_of

pytestmark = pytest.mark.unit


def test_endpoint_is_the_hardware_id() -> None:
    assert endpoint_of(["ep=SN-1", "pct=110"]) == "SN-1"
    for bad in ([], ["ep="], ["ep=a", "ep=b"], ["ep=has space"]):
        with pytest.raises(InvalidArgument):
            endpoint_of(bad)


def test_delete_write_write_finish() -> None:
    steps = bootstrap_steps(
        server_uri="coaps://10.0.0.1:5684", psk_identity="acme:SN-1:ab", psk=b"\xfb\xff" * 8
    )
    assert [(s.method, s.uri_path) for s in steps] == [
        ("DELETE", ()),
        ("PUT", ("0", "1")),
        ("PUT", ("1", "1")),
        ("POST", ("bs",)),
    ]
    security = {e["n"]: e for e in json.loads(steps[1].payload)}
    assert security["/0/1/0"]["vs"] == "coaps://10.0.0.1:5684"
    assert security["/0/1/1"]["vb"] is False and security["/0/1/2"]["v"] == 0
    # Opaque values in standard base64 with padding (Wakaama's decoder).
    assert base64.b64decode(security["/0/1/3"]["vd"], validate=True) == b"acme:SN-1:ab"
    assert base64.b64decode(security["/0/1/5"]["vd"], validate=True) == b"\xfb\xff" * 8
    assert "+" in security["/0/1/5"]["vd"] or "/" in security["/0/1/5"]["vd"]
    server = {e["n"]: e for e in json.loads(steps[2].payload)}
    assert server["/1/1/0"]["v"] == security["/0/1/10"]["v"] == 1
    assert server["/1/1/1"]["v"] == 300 and server["/1/1/7"]["vs"] == "U"
    assert steps[1].content_format == steps[2].content_format == 110


def test_bad_parameters() -> None:
    with pytest.raises(InvalidArgument):
        bootstrap_steps(server_uri="coap://x:5683", psk_identity="a", psk=b"k" * 16)
    with pytest.raises(InvalidArgument):
        bootstrap_steps(
            server_uri="coaps://x:5684", psk_identity="a", psk=b"k" * 16, short_server_id=0
        )


def test_the_client_side_keeps_what_the_server_wrote() -> None:
    from corem_ingress.lwm2m.bootstrap import BootstrapClient

    steps = bootstrap_steps(
        server_uri="coaps://10.0.0.1:5684", psk_identity="acme:SN-1:ab", psk=b"k" * 16
    )
    client = BootstrapClient()
    assert client.handle("POST", ("bs",), b"") == "4.06"  # nothing written yet
    codes = [client.handle(s.method, s.uri_path, s.payload) for s in steps]
    assert codes == ["2.02", "2.04", "2.04", "2.04"] and client.finished
    assert (client.server.server_uri, client.server.psk_identity) == (
        "coaps://10.0.0.1:5684",
        "acme:SN-1:ab",
    )
    assert client.server.psk == b"k" * 16 and client.server.lifetime_s == 300
    assert client.handle("PUT", ("0", "1"), b"not json") == "4.00"
    assert client.handle("GET", ("3", "0"), b"") == "4.05"


def test_certificate_mode_writes_both_certificates_and_no_private_key() -> None:
    from corem_ingress.lwm2m.bootstrap import SECURITY_MODE_CERTIFICATE, BootstrapClient

    steps = bootstrap_steps(
        server_uri="coaps://10.0.0.1:5684",
        client_certificate=b"\x30\x82device",
        server_certificate=b"\x30\x82server",
    )
    security = {e["n"]: e for e in json.loads(steps[1].payload)}
    assert security["/0/1/2"]["v"] == SECURITY_MODE_CERTIFICATE == 2
    assert base64.b64decode(security["/0/1/3"]["vd"]) == b"\x30\x82device"
    assert base64.b64decode(security["/0/1/4"]["vd"]) == b"\x30\x82server"
    assert "/0/1/5" not in security  # the server never holds the device's private key
    client = BootstrapClient()
    codes = [client.handle(s.method, s.uri_path, s.payload) for s in steps]
    assert codes == ["2.02", "2.04", "2.04", "2.04"] and client.finished
    assert client.server.security_mode == SECURITY_MODE_CERTIFICATE
    assert client.server.client_certificate == b"\x30\x82device"
    assert client.server.server_certificate == b"\x30\x82server" and not client.server.psk


def test_certificate_mode_needs_both_certificates() -> None:
    for client_cert, server_cert in ((b"", b"s"), (b"c", b"")):
        with pytest.raises(InvalidArgument):
            bootstrap_steps(
                server_uri="coaps://x:5684",
                client_certificate=client_cert,
                server_certificate=server_cert,
            )
    with pytest.raises(InvalidArgument):
        bootstrap_steps(server_uri="coaps://x:5684")  # neither a PSK nor a certificate
