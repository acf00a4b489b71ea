"""Translation between aiocoap messages and the LwM2M data classes: the thin layer the CoAP
listener's ``mount("rd", …)`` / ``mount("dp", …)`` and ``request(addr, msg)`` need.

No I/O: a mounted handler built by ``mounted_handler`` turns the request into a
``Lwm2mDeviceService.handle`` call and its ``DeviceReply`` into the response message;
``request_message`` turns a ``DeviceRequest`` into the message to send over the device's
session and ``device_response`` the device's answer into a ``DeviceResponse``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.lwm2m.service import DeviceReply, Lwm2mDeviceService
from corem_ingress.core.errors import IngressError
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse
from corem_ingress.lwm2m.registration import Peer

_METHODS = {
    "GET": Code.GET,
    "PUT": Code.PUT,
    "POST": Code.POST,
    "DELETE": Code.DELETE,
    # LwM2M 1.1 composite operations (RFC 8132).
    "FETCH": Code.FETCH,
    "iPATCH": Code.iPATCH,
}


def code_of(dotted: str) -> Any:
    """``"2.05"`` -> ``Code.CONTENT``."""
    cls, detail = dotted.split(".")
    return Code(int(cls) * 32 + int(detail))


def dotted(code: Any) -> str:
    """``Code.CONTENT`` -> ``"2.05"``."""
    value = int(code)
    return f"{value >> 5}.{value & 0x1F:02d}"


def _cf(value: Any) -> int | None:
    return None if value is None else int(value)


def request_message(req: DeviceRequest) -> Any:
    """The server-initiated request to send (the CoAP layer sets type, message id, token)."""
    msg = Message(code=_METHODS[req.method], payload=req.payload)
    msg.opt.uri_path = req.uri_path
    if req.uri_query:
        msg.opt.uri_query = req.uri_query
    if req.content_format is not None:
        msg.opt.content_format = req.content_format
    if req.accept is not None:
        msg.opt.accept = req.accept
    if req.observe is not None:
        msg.opt.observe = req.observe
    return msg


def device_response(msg: Any) -> DeviceResponse:
    """The device's answer (a response or notification) as data."""
    return DeviceResponse(dotted(msg.code), _cf(msg.opt.content_format), bytes(msg.payload))


def request_fields(msg: Any) -> tuple[str, tuple[str, ...], tuple[str, ...], int | None, bytes]:
    """(method, uri_path, uri_query, content_format, payload) of a device's request."""
    code = int(msg.code)
    method = next((name for name, c in _METHODS.items() if int(c) == code), dotted(msg.code))
    return (
        method,
        tuple(msg.opt.uri_path),
        tuple(msg.opt.uri_query),
        _cf(msg.opt.content_format),
        bytes(msg.payload),
    )


def reply_message(reply: DeviceReply) -> Any:
    msg = Message(code=code_of(reply.code))
    if reply.location_path:
        msg.opt.location_path = reply.location_path
    if reply.max_age is not None:
        msg.opt.max_age = reply.max_age
    return msg


PeerOf = Callable[[Any], Awaitable[Peer]]


def mounted_handler(
    service: Lwm2mDeviceService, peer_of: PeerOf
) -> Callable[[Any, Any], Awaitable[Any]]:
    """A handler for ``CoapListener.mount("rd", h)`` and ``mount("dp", h)``.

    ``peer_of(session)`` builds the ``Peer`` of a DTLS session: its credential's identity,
    the device's hardware_id (from the registry), this node's id and the session id. An
    ``IngressError`` it raises (e.g. the device record is gone) becomes the reply code.
    """

    async def handle(session: Any, msg: Any) -> Any:
        try:
            peer = await peer_of(session)
        except IngressError as exc:
            return Message(code=code_of(exc.coap_code))
        method, path, query, cf, payload = request_fields(msg)
        reply = await service.handle(peer, method, path, query, cf, payload)
        return reply_message(reply)

    return handle


__all__ = [
    "code_of",
    "device_response",
    "dotted",
    "mounted_handler",
    "reply_message",
    "request_fields",
    "request_message",
]
