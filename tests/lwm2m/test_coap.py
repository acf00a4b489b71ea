"""aiocoap messages <-> LwM2M data: encoded to wire bytes and decoded back, as the CoAP layer
would; and the mounted /rd handler on a real Redis."""

import time

import pytest
import redis.asyncio as aioredis
from aiocoap import ACK, CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.lwm2m.coap import (
    code_of,
    device_response,
    dotted,
    mounted_handler,
    reply_message,
    request_fields,
    request_message,
)
from corem_ingress.adapters.lwm2m.service import DeviceReply, Lwm2mDeviceService
from corem_ingress.core.errors import NotFound
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.content import Record
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.registration import Peer, Registrar
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Lwm2mStore
from corem_ingress.store.uplinks import UplinkStore


def wire(msg: Message, mtype: object = CON) -> Message:
    """Through the codec: what the peer decodes."""
    msg.mtype = mtype
    msg.mid = 7
    msg.token = b"\x01\x02"
    return Message.decode(msg.encode())


@pytest.mark.unit
def test_codes() -> None:
    assert dotted(Code.CONTENT) == "2.05" and dotted(Code.METHOD_NOT_ALLOWED) == "4.05"
    assert code_of("2.01") == Code.CREATED and code_of("4.12") == Code.PRECONDITION_FAILED


@pytest.mark.unit
@pytest.mark.parametrize(
    "req",
    [
        ops.read("/3/0", accept=110),
        ops.observe("/3303/0"),
        ops.cancel_observe("/3303/0"),
        ops.discover("/3"),
        ops.execute("/3/0/4", "0='x'"),
        ops.write("/1/0", [Record(Lwm2mPath.parse("/1/0/1"), ValueType.INTEGER, 60)]),
        ops.write_attributes("/3303/0/5700", pmin=5, pmax=60),
        ops.read("/3/0", root="/lwm2m"),
    ],
)
def test_request_message_on_the_wire(req: ops.DeviceRequest) -> None:
    got = wire(request_message(req))
    assert request_fields(got) == (
        req.method, req.uri_path, req.uri_query, req.content_format, req.payload,
    )  # fmt: skip
    assert (None if got.opt.accept is None else int(got.opt.accept)) == req.accept
    assert got.opt.observe == req.observe


@pytest.mark.unit
def test_simulated_client_over_the_codec() -> None:
    client = SimulatedClient("SN-1", clock=lambda: 1_700_000_000.0)
    for req in [ops.read("/3303/0/5700"), ops.read("/3/0", accept=112), ops.execute("/3/0/4")]:
        method, path, query, cf, payload = request_fields(wire(request_message(req)))
        accept = req.accept
        answer = client.handle(method, path, uri_query=query, content_format=cf, accept=accept,
                               payload=payload)  # fmt: skip
        resp = Message(code=code_of(answer.code), payload=answer.payload)
        if answer.content_format is not None:
            resp.opt.content_format = answer.content_format
        result = ops.interpret(req, device_response(wire(resp, ACK)), now=0)
        assert result.code == answer.code
    assert ops.interpret(
        ops.read("/3303/0/5700"),
        device_response(wire(Message(code=Code.CONTENT, payload=b"21.5"), ACK)),
        now=0,
    ).records == (Record(Lwm2mPath.parse("/3303/0/5700"), ValueType.FLOAT, 21.5),)


@pytest.mark.unit
def test_reply_message() -> None:
    created = wire(reply_message(DeviceReply("2.01", ("rd", "abc"))), ACK)
    assert created.code == Code.CREATED and created.opt.location_path == ("rd", "abc")
    assert wire(reply_message(DeviceReply("4.03")), ACK).code == Code.FORBIDDEN


@pytest.mark.integration
async def test_mounted_handler(redis: aioredis.Redis, keys: KeySchema) -> None:
    service = Lwm2mDeviceService(
        Registrar(), Lwm2mStore(redis, keys), UplinkStore(redis, keys).append
    )
    ident = DeviceIdentity("acme", "0b7c6f62-3f0e-4c39-9a55-6a1f0f1b2c3d", CredentialKind.PSK, "p")

    async def peer_of(session: object) -> Peer:
        if session == "gone":
            raise NotFound("device record is gone")
        return Peer(ident, "SN-1", "node-a", str(session))

    handler = mounted_handler(service, peer_of)
    client = SimulatedClient("SN-1", clock=time.time)

    def register(query: list[str]) -> Message:
        msg = Message(code=Code.POST, payload=client.register_payload())
        msg.opt.uri_path = ("rd",)
        msg.opt.uri_query = tuple(query)
        msg.opt.content_format = 40
        return wire(msg)

    reply = await handler("s1", register(client.register_query()))
    assert reply.code == Code.CREATED and reply.opt.location_path[0] == "rd"
    assert (await handler("s1", register(["ep=SN-2", "lwm2m=1.1"]))).code == Code.FORBIDDEN
    assert (await handler("gone", register(client.register_query()))).code == Code.NOT_FOUND
    delete = Message(code=Code.DELETE)
    delete.opt.uri_path = tuple(reply.opt.location_path)
    assert (await handler("s1", wire(delete))).code == Code.DELETED
