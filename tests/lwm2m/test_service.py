"""The device-side service against a real Redis (registrations + uplink stream): the flow a
simulated client drives, every refusal, and "refused means nothing stored". Integration."""

import time
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from corem_ingress.adapters.lwm2m.service import DeviceReply, Lwm2mDeviceService
from corem_ingress.app import redis_client
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Uplink
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.registration import (
    Deregistered,
    Event,
    Peer,
    Registered,
    Registrar,
    RegistrationConfig,
    Updated,
)
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Lwm2mStore
from corem_ingress.store.uplinks import UplinkStore

pytestmark = pytest.mark.integration

DEV = "0b7c6f62-3f0e-4c39-9a55-6a1f0f1b2c3d"
HW = "SN-0001"


def peer(*, secure: bool = True, kind: CredentialKind = CredentialKind.PSK) -> Peer:
    ident = DeviceIdentity("acme", DEV, kind, "psk_1")
    return Peer(ident, HW, "node-a", "sess-1", secure=secure)


class Harness:
    def __init__(self, redis: aioredis.Redis, keys: KeySchema, config: RegistrationConfig) -> None:
        self.redis, self.keys = redis, keys
        self.events: list[Event] = []
        self.store = Lwm2mStore(redis, keys)
        self.uplinks = UplinkStore(redis, keys)
        self.service = Lwm2mDeviceService(
            Registrar(config), self.store, self.uplinks.append, on_event=self.events.append
        )
        self.client = SimulatedClient(HW, clock=time.time, lifetime_s=120)

    async def register(self, query: list[str] | None = None, payload: bytes | None = None,
                       p: Peer | None = None) -> DeviceReply:  # fmt: skip
        return await self.service.handle(
            p or peer(), "POST", ["rd"],
            self.client.register_query() if query is None else query, 40,
            self.client.register_payload() if payload is None else payload,
        )  # fmt: skip

    async def lwm2m_keys(self) -> list[str]:
        return sorted(await self.redis.keys("*lwm2m*"))

    async def uplink_list(self) -> list[Uplink]:
        entries = await self.redis.xrange(self.keys.uplink_stream("acme"))
        return [Uplink.from_fields(fields) for _id, fields in entries]


@pytest.fixture
def h(redis: aioredis.Redis, keys: KeySchema) -> Harness:
    return Harness(redis, keys, RegistrationConfig())


async def test_register_update_send_deregister(h: Harness) -> None:
    reply = await h.register()
    assert reply.code == "2.01" and reply.location_path[0] == "rd"
    reg_id = reply.location_path[1]
    reg = await h.store.get_by_device(DEV)
    assert reg is not None and reg.registration_id == reg_id and reg.endpoint == HW
    assert isinstance(h.events[-1], Registered)
    # Update: the client's lifetime changed (server wrote /1/0/1).
    h.client.handle("PUT", ["1", "0", "1"], content_format=0, payload=b"60")
    event = h.client.next_event()
    assert event is not None
    reply = await h.service.handle(peer(), "POST", ["rd", reg_id], ["lt=60"], None, b"")
    assert reply == DeviceReply("2.04")
    assert isinstance(h.events[-1], Updated)
    stored = await h.store.get(reg_id)
    assert stored is not None and stored.lifetime_s == 60
    # Send (POST /dp) becomes an uplink, appended before 2.04.
    cf, payload = h.client.send_payload(["/3303/0/5700"])
    assert (await h.service.handle(peer(), "POST", ["dp"], [], cf, payload)).code == "2.04"
    # A notification too.
    observe = ops.observe("/3303/0")
    h.client.set_temperature(22.5)
    r = h.client.handle(observe.method, observe.uri_path, accept=observe.accept)
    await h.service.notification(
        stored, observe, ops.DeviceResponse(r.code, r.content_format, r.payload)
    )
    ups = await h.uplink_list()
    assert [u.transport.value for u in ups] == ["lwm2m", "lwm2m"]
    sent, notified = (cast(dict[str, Any], u.payload) for u in ups)
    assert (sent["source"], notified["source"]) == ("send", "notify")
    assert sent["records"][0]["value"] == 21.5
    expected = {"path": "/3303/0/5700", "type": "float", "value": 22.5, "time": None}
    assert expected in notified["records"]
    # De-register, then the id is unknown.
    assert (await h.service.handle(peer(), "DELETE", ["rd", reg_id], [], None, b"")).code == "2.02"
    assert isinstance(h.events[-1], Deregistered)
    assert await h.lwm2m_keys() == []
    assert (await h.service.handle(peer(), "POST", ["rd", reg_id], [], None, b"")).code == "4.04"


async def test_wrong_endpoint_for_the_credential_is_4_03_and_nothing_stored(h: Harness) -> None:
    query = ["ep=SN-9999", "lt=60", "lwm2m=1.1"]
    assert (await h.register(query=query)).code == "4.03"
    assert await h.lwm2m_keys() == [] and h.events == []


async def test_malformed_link_format_is_4_00_and_nothing_stored(h: Harness) -> None:
    assert (await h.register(payload=b"</1/0>,</3/0")).code == "4.00"
    assert (await h.register(payload=b"</1/0/0>")).code == "4.00"
    assert await h.lwm2m_keys() == [] and h.events == []


async def test_unknown_registration_id_on_update_is_4_04(h: Harness) -> None:
    assert (await h.service.handle(peer(), "POST", ["rd", "nope"], [], None, b"")).code == "4.04"
    assert (await h.service.handle(peer(), "DELETE", ["rd", "nope"], [], None, b"")).code == "4.04"
    assert await h.lwm2m_keys() == []


async def test_other_refusals(h: Harness) -> None:
    assert (await h.register(p=peer(secure=False))).code == "4.01"  # NoSec not enabled
    assert (await h.register(p=peer(kind=CredentialKind.API_KEY))).code == "4.03"
    assert (await h.register(query=["ep=SN-0001", "lwm2m=2.0"])).code == "4.12"
    assert (await h.service.handle(peer(), "GET", ["rd"], [], None, b"")).code == "4.05"
    # Send before registering, and a Send that is not SenML.
    cf, payload = h.client.send_payload(["/3/0/9"])
    assert (await h.service.handle(peer(), "POST", ["dp"], [], cf, payload)).code == "4.04"
    assert (await h.service.handle(peer(), "POST", ["dp"], [], 0, b"1")).code == "4.00"
    assert await h.lwm2m_keys() == [] and await h.uplink_list() == []
    assert h.service.handles(["rd", "x"]) and h.service.handles(["dp"])
    assert not h.service.handles(["up", "telemetry"]) and not h.service.handles([])


async def test_nosec_when_enabled(redis: aioredis.Redis, keys: KeySchema) -> None:
    h = Harness(redis, keys, RegistrationConfig(allow_nosec=True))
    assert (await h.register(p=peer(secure=False))).code == "2.01"
    reg = await h.store.get_by_device(DEV)
    assert reg is not None and reg.security == "nosec"


async def test_storage_down_is_5_03(keys: KeySchema) -> None:
    dead = redis_client("redis://127.0.0.1:1", socket_timeout=0.5)
    try:
        h = Harness(dead, keys, RegistrationConfig())
        assert (await h.register()).code == "5.03"
    finally:
        await dead.aclose()
