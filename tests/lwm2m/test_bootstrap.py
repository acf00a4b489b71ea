"""The LwM2M bootstrap server with Eclipse Wakaama's ``lwm2mclient_tinydtls -b``: the device
bootstraps with a psk claim on the DTLS port (``/bs?ep=``), is written its own PSK and the
server URI, and registers with them. Real node, real redis-server; the Wakaama process is
bounded in time and killed by its PID."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from typing import Any

import pytest

from corem_ingress.adapters import coap
from corem_ingress.core.claims import ClaimKind
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.devices import DeviceError
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.coap.conftest import CertSet, coap_section
from tests.peers import peer

#: Wakaama waits its bootstrap server's ClientHoldOffTime (10 s) before the request.
WAKAAMA_MAX_S = 45.0
WAIT_S = 30.0


async def until(check: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.1)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wakaama_bootstraps_then_registers(
    start_node: Any, certs: CertSet, redis: Any, keys: KeySchema, keyring: Any
) -> None:
    node = await start_node(
        [coap.build],
        coap=coap_section(certs),
        credentials={"psk_min_bytes": 16},  # tinydtls holds at most 16 bytes
        lwm2m={"observe_paths": []},
    )
    port = next(x for x in node.listeners if x.name == "coap").port
    registry = Registry(
        redis, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=3600, psk_min_bytes=16
    )
    claim_psk = secrets.token_bytes(16)
    claim = await registry.create_claim(
        "acme",
        ClaimKind.PSK,
        CredentialKind.PSK,
        max_uses=10,
        expires_at=None,
        actor="test",
        psk_bytes=claim_psk,
    )
    endpoint = f"bs-{os.getpid()}"
    args = [
        peer("lwm2mclient_tinydtls"), "-b", "-4", "-h", "127.0.0.1", "-p", str(port),
        "-l", str(_free_udp_port()), "-n", endpoint, "-i", claim.claim.lookup,
        "-s", claim_psk.hex(), "-t", "30",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    watchdog = asyncio.get_running_loop().call_later(WAKAAMA_MAX_S, proc.kill)
    try:

        async def enrolled() -> bool:
            return bool(await redis.exists(keys.hardware("acme", endpoint)))

        await until(enrolled)
        device = await registry.find_device("acme", endpoint)

        async def registered() -> bool:
            return bool(await redis.exists(keys.lwm2m_device(device.device_id)))

        await until(registered)
        # It registered with its own PSK (first use: a retry of the claim is refused now).
        (cred,) = await registry.credentials("acme", device.device_id)
        assert cred.kind is CredentialKind.PSK and cred.status == "active"
        enrolment = await redis.hgetall(keys.enrolment("acme", endpoint))
        assert "used_at" in enrolment and enrolment["credential_id"] == cred.credential_id
        assert (await registry.get_claim("acme", claim.claim.claim_id)).uses == 1
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()


async def test_the_simulator_bootstraps_then_registers(
    start_node: Any, certs: CertSet, redis: Any, keys: KeySchema, keyring: Any
) -> None:
    from corem_ingress.sim.devices import Target
    from corem_ingress.sim.lwm2m_device import Lwm2mDevice

    node = await start_node([coap.build], coap=coap_section(certs), lwm2m={"observe_paths": []})
    port = next(x for x in node.listeners if x.name == "coap").port
    registry = node.services.registry
    claim_psk = secrets.token_bytes(32)
    claim = await registry.create_claim(
        "acme",
        ClaimKind.PSK,
        CredentialKind.PSK,
        max_uses=1,
        expires_at=None,
        actor="test",
        psk_bytes=claim_psk,
    )
    dev = Lwm2mDevice(
        "sim-bs",
        Target("127.0.0.1", port, str(certs.ca_pem)),
        endpoint="sim-bs-1",
        psk_identity=claim.claim.lookup,
        psk=claim_psk,
    )
    try:
        await dev.bootstrap()
        device = await registry.find_device("acme", "sim-bs-1")
        assert dev._psk[0] != claim.claim.lookup and dev._psk[0].startswith("acme:sim-bs-1:")
        assert [r[0] for r in dev.requests] == ["DELETE", "PUT", "PUT", "POST"]
        await dev.connect()  # registers over the bootstrap session, now the device's
        assert await redis.exists(keys.lwm2m_device(device.device_id))
        # The claim had one use: another endpoint is refused (4.03).
        other = Lwm2mDevice(
            "sim-bs-2",
            Target("127.0.0.1", port, str(certs.ca_pem)),
            endpoint="sim-bs-2",
            psk_identity=claim.claim.lookup,
            psk=claim_psk,
        )
        try:
            with pytest.raises(DeviceError, match=r"coap_4\.03"):
                await other.bootstrap()
        finally:
            await other.close()
    finally:
        await dev.close()
