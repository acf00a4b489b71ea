"""LwM2M end-to-end fixtures: a node with the CoAP/DTLS listener (LwM2M mounted) and the admin
API, devices provisioned in the real Redis, and the simulator's LwM2M client over real DTLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from corem_ingress.adapters import coap, http
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.devices import Target
from corem_ingress.sim.lwm2m_device import Lwm2mDevice
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.coap.conftest import CertSet, certs, coap_section  # noqa: F401 - fixture
from tests.http.conftest import Api, operator_tokens  # noqa: F401 - fixture
from tests.pki import trust_ca

#: Every wait in these tests is bounded by this.
WAIT_S = 10.0

_n = iter(range(1, 1_000_000))


@dataclass
class Provisioned:
    device_id: str
    hardware_id: str
    credential_id: str
    psk_identity: str | None = None
    psk: bytes | None = None
    cert: str | None = None
    key: str | None = None


async def provision(
    registry: Registry, certset: CertSet, kind: str = "psk", tenant: str = "acme"
) -> Provisioned:
    n = next(_n)
    hw = f"SN-{kind}-{n:04d}"
    if kind == "psk":
        key = f"lwm2m-psk-{n:04d}".encode().ljust(32, b"k")
        res = await registry.provision(
            tenant,
            hw,
            CredentialKind.PSK,
            actor="test",
            psk_identity=f"{tenant}:ep-{n}",
            psk_bytes=key,
        )
        assert res.psk is not None
        return Provisioned(
            res.device.device_id, hw, res.psk.credential_id, res.psk.psk_identity, res.psk.psk
        )
    issued, cert, keyfile = certset.device(hw)
    await trust_ca(registry, tenant, certset.ca)
    res = await registry.provision(
        tenant, hw, CredentialKind.X509, actor="test", cert_pem=issued.cert_pem.decode()
    )
    assert res.cert is not None
    return Provisioned(
        res.device.device_id, hw, res.cert.fingerprint, cert=str(cert), key=str(keyfile)
    )


@dataclass
class Lwm2mNode:
    node: Any
    port: int
    api: Api
    registry: Registry
    certs: CertSet
    redis: Any
    devices: list[Lwm2mDevice]

    def device(self, p: Provisioned, *, endpoint: str | None = None, port: int | None = None,
               **kw: Any) -> Lwm2mDevice:  # fmt: skip
        dev = Lwm2mDevice(
            p.hardware_id,
            Target("127.0.0.1", port or self.port, str(self.certs.ca_pem)),
            endpoint=endpoint or p.hardware_id,
            psk_identity=p.psk_identity,
            psk=p.psk,
            cert_file=p.cert,
            key_file=p.key,
            **kw,
        )
        self.devices.append(dev)
        return dev

    async def uplinks(self, tenant: str = "acme", *, at_least: int = 1) -> list[dict[str, Any]]:
        """The tenant's lwm2m uplinks (payload decoded), waiting until there are ``at_least``."""
        stream = KeySchema("corem").uplink_stream(tenant)
        async with asyncio.timeout(WAIT_S):
            while True:
                out = []
                for _id, fields in await self.redis.xrange(stream):
                    if fields.get("transport") == "lwm2m":
                        out.append({**fields, "payload": json.loads(fields["payload"])})
                if len(out) >= at_least:
                    return out
                await asyncio.sleep(0.05)

    async def registration(self, device_id: str, tenant: str = "acme") -> Any:
        return await self.api.request("GET", f"/api/v1/devices/{device_id}/lwm2m", tenant=tenant)

    async def op(self, device_id: str, operation: str, tenant: str = "acme", **body: Any) -> Any:
        return await self.api.request(
            "POST", f"/api/v1/devices/{device_id}/lwm2m/{operation}", tenant=tenant, json=body
        )


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool]) -> None:
    """Wait (bounded) until ``check()`` is true."""
    async with asyncio.timeout(WAIT_S):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def lwm2m_node(
    start_node: Any,
    certs: CertSet,  # noqa: F811
    operator_tokens: Any,  # noqa: F811
    redis: Any,
    keyring: Any,
    keys: KeySchema,
) -> AsyncIterator[Callable[..., Awaitable[Lwm2mNode]]]:
    sessions: list[aiohttp.ClientSession] = []
    made: list[Lwm2mNode] = []
    path, tokens = operator_tokens

    async def start(
        clock: Any = None,
        limits: dict[str, Any] | None = None,
        coap_extra: dict[str, Any] | None = None,
        provisioning: dict[str, Any] | None = None,
        **lwm2m: Any,
    ) -> Lwm2mNode:
        node = await start_node(
            [coap.build, http.build],
            clock=clock,
            coap=coap_section(certs, **(coap_extra or {})),
            http={"admin_tokens_file": str(path)},
            limits={"auth_fail_max": 0, **(limits or {})},
            lwm2m=lwm2m,
            provisioning=provisioning or {},
        )
        coap_listener = next(x for x in node.listeners if x.name == "coap")
        http_listener = next(x for x in node.listeners if x.name == "http")
        session = aiohttp.ClientSession()
        sessions.append(session)
        api = Api(session, f"http://127.0.0.1:{http_listener.port}", tokens)
        registry = node.services.registry
        out = Lwm2mNode(node, coap_listener.port, api, registry, certs, redis, [])
        made.append(out)
        return out

    yield start
    for n in made:
        for d in n.devices:
            await d.close()
    for s in sessions:
        await s.close()
