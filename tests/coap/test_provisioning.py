"""Provisioning by claim over CoAP on the DTLS port: coap-client-openssl and aiocoap
(tinydtls) with a psk claim ``POST /provision``; the claim opens nothing else. Real node,
real redis-server. PSKs of 16 bytes (``credentials.psk_min_bytes``): stock tinydtls holds
no longer key, like the constrained devices it runs on."""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiocoap
import pytest
from aiocoap import Code, Message

from corem_ingress.adapters import coap
from corem_ingress.core.claims import ClaimKind
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry
from tests.coap.conftest import (
    CertSet,
    coap_port,
    coap_section,
    psk_args,
    read_uplinks,
    run_client,
    url,
)

SMALL_PSK = {"psk_min_bytes": 16}


@pytest.fixture
def registry(redis: Any, keys: Any, keyring: Any) -> Registry:
    return Registry(
        redis, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=3600, psk_min_bytes=16
    )


@pytest.fixture
def coap_node(start_node: Any, certs: CertSet) -> Any:
    async def start(**provisioning: Any) -> Any:
        return await start_node(
            [coap.build],
            coap=coap_section(certs),
            credentials=SMALL_PSK,
            provisioning=provisioning,
        )

    return start


async def psk_claim(
    registry: Registry, *, max_uses: int = 5, issues: CredentialKind = CredentialKind.PSK
) -> tuple[str, str, bytes]:
    key = secrets.token_urlsafe(12).encode()  # 16 printable bytes: libcoap's -k takes text
    issued = await registry.create_claim(
        "acme",
        ClaimKind.PSK,
        issues,
        max_uses=max_uses,
        expires_at=None,
        actor="test",
        psk_bytes=key,
    )
    return issued.claim.claim_id, issued.claim.lookup, key


async def provision_with_libcoap(port: int, identity: str, key: bytes, hardware_id: str) -> Any:
    body = json.dumps({"hardware_id": hardware_id})
    return await run_client(
        ["-m", "post", *psk_args(identity, key), "-e", body, url(port, "provision")]
    )


async def aiocoap_request(port: int, identity: str, key: bytes, msg: Message) -> Message:
    ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    try:
        ctx.client_credentials.load_from_dict(
            {
                f"coaps://127.0.0.1:{port}/*": {
                    "dtls": {"psk": {"hex": key.hex()}, "client-identity": {"ascii": identity}}
                }
            }
        )
        return await ctx.request(msg).response
    finally:
        await ctx.shutdown()


async def test_libcoap_enrols_and_the_device_sends_with_its_own_psk(
    coap_node: Any, registry: Registry, redis: Any
) -> None:
    port = coap_port(await coap_node())
    _claim_id, identity, key = await psk_claim(registry)
    first = await provision_with_libcoap(port, identity, key, "coap-hw-1")
    assert first.rc == 0, first.stderr
    enrolled = json.loads(first.stdout)
    assert enrolled["created"] and enrolled["credential_kind"] == "psk"
    # A retry before first use re-issues.
    again = await provision_with_libcoap(port, identity, key, "coap-hw-1")
    reissued = json.loads(again.stdout)
    assert reissued["reissued"] and reissued["psk_identity"] != enrolled["psk_identity"]
    # The device's own PSK (random bytes): aiocoap + tinydtls.
    up = Message(code=Code.POST, uri=f"coaps://127.0.0.1:{port}/up/telemetry", payload=b"7")
    reply = await aiocoap_request(
        port, reissued["psk_identity"], bytes.fromhex(reissued["psk"]), up
    )
    assert reply.code == Code.CHANGED
    (entry,) = await read_uplinks(redis, "acme")
    assert entry["device_id"] == enrolled["device_id"]
    # After first use the retry is refused (4.09), over aiocoap too.
    retry = Message(
        code=Code.POST,
        uri=f"coaps://127.0.0.1:{port}/provision",
        payload=b'{"hardware_id": "coap-hw-1"}',
    )
    refused = await aiocoap_request(port, identity, key, retry)
    assert refused.code == Code.CONFLICT
    assert json.loads(refused.payload)["error"]["code"] == "ALREADY_EXISTS"


async def test_a_claim_session_opens_nothing_else(coap_node: Any, registry: Registry) -> None:
    port = coap_port(await coap_node())
    _claim_id, identity, key = await psk_claim(registry)
    base = f"coaps://127.0.0.1:{port}"
    for msg in (
        Message(code=Code.POST, uri=f"{base}/up/telemetry", payload=b"1"),
        Message(code=Code.GET, uri=f"{base}/down", observe=0),
        Message(code=Code.POST, uri=f"{base}/rd?ep=x", payload=b"</1/0>"),
    ):
        reply = await aiocoap_request(port, identity, key, msg)
        assert reply.code == Code.UNAUTHORIZED, msg
    bad = Message(code=Code.POST, uri=f"{base}/provision", payload=b"{}")
    assert (await aiocoap_request(port, identity, key, bad)).code == Code.BAD_REQUEST
    get = Message(code=Code.GET, uri=f"{base}/provision")
    assert (await aiocoap_request(port, identity, key, get)).code == Code.METHOD_NOT_ALLOWED


async def test_wrong_revoked_and_rate_limited_claims(coap_node: Any, registry: Registry) -> None:
    port = coap_port(await coap_node(claim_rate_per_minute=1))
    claim_id, identity, key = await psk_claim(registry)
    wrong = await provision_with_libcoap(port, identity, b"x" + key[1:], "w")
    # coap-client exits 0 after a failed handshake: the alert is what it reports.
    assert "decrypt error" in wrong.stdout and "created" not in wrong.stdout
    ok = await provision_with_libcoap(port, identity, key, "r1")
    assert json.loads(ok.stdout)["created"]
    msg = Message(
        code=Code.POST, uri=f"coaps://127.0.0.1:{port}/provision", payload=b'{"hardware_id":"r2"}'
    )
    limited = await aiocoap_request(port, identity, key, msg)
    assert limited.code == Code.TOO_MANY_REQUESTS and limited.opt.max_age == 60
    await registry.revoke_claim("acme", claim_id, actor="test")
    revoked = await aiocoap_request(port, identity, key, msg)
    assert revoked.code == Code.UNAUTHORIZED
