"""Interop with libcoap's real clients (coap-client-openssl, coap-client-gnutls)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.coap.conftest import (
    CertSet,
    cert_args,
    coap_port,
    provision_cert,
    provision_psk,
    psk_args,
    read_uplinks,
    run_client,
    url,
)

BINARIES = ["coap-client-openssl", "coap-client-gnutls"]


@pytest.mark.parametrize("binary", BINARIES)
async def test_psk_uplink_is_appended_then_acknowledged(
    coap_node: Any, registry: Any, redis: Any, binary: str
) -> None:
    node = await coap_node()
    device_id, ident, key = await provision_psk(registry)
    res = await run_client(
        [
            "-m",
            "post",
            *psk_args(ident, key),
            "-e",
            '{"t":21.5}',
            url(coap_port(node), "up/telemetry"),
        ],
        binary=binary,
    )
    assert res.rc == 0, res.stderr
    (entry,) = await read_uplinks(redis, "acme")
    assert entry["device_id"] == device_id
    assert entry["transport"] == "coap"
    assert entry["kind"] == "telemetry"
    assert json.loads(entry["payload"]) == {"t": 21.5}


@pytest.mark.parametrize("binary", BINARIES)
async def test_ca_signed_registered_cert_uplink(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet, binary: str
) -> None:
    node = await coap_node()
    issued, cert, key = certs.device(f"ca-signed-{binary}")
    device_id = await provision_cert(registry, issued, ca=certs.ca)
    res = await run_client(
        [
            "-m",
            "post",
            *cert_args(cert, key, certs.ca_pem),
            "-e",
            "on",
            url(coap_port(node), "up/event"),
        ],
        binary=binary,
    )
    assert res.rc == 0, res.stderr
    (entry,) = await read_uplinks(redis, "acme")
    assert (entry["device_id"], entry["kind"]) == (device_id, "event")
    assert json.loads(entry["payload"]) == "on"
    assert entry["payload_encoding"] == "text"


@pytest.mark.parametrize("binary", BINARIES)
async def test_self_signed_registered_cert_uplink(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet, binary: str
) -> None:
    node = await coap_node()
    issued, cert, key = certs.device(f"self-signed-{binary}", ca=None)
    # Self-signed: the tenant allows it, and it is registered with proof of possession.
    device_id = await provision_cert(registry, issued, ca=None)
    res = await run_client(
        [
            "-m",
            "post",
            *cert_args(cert, key, certs.ca_pem),
            "-e",
            "1",
            url(coap_port(node), "up/state"),
        ],
        binary=binary,
    )
    assert res.rc == 0, res.stderr
    (entry,) = await read_uplinks(redis, "acme")
    assert (entry["device_id"], entry["kind"]) == (device_id, "state")
