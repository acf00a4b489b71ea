"""CoAP over DTLS 1.2 with a PSK or a certificate: the simulator's OpenSSL DTLS client
(``sim/dtls_client.py``) carrying its CoAP client (``sim/lwm2m_device.CoapDtlsChannel``:
confirmable requests with retransmission), over loopback UDP."""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters import coap
from corem_ingress.adapters.dtls.records import alert_name
from corem_ingress.adapters.lwm2m.coap import dotted
from corem_ingress.core.causes import ALERT_UNKNOWN_PSK_IDENTITY, Cause
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.dtls_client import AsyncDtlsClient, cert_context, psk_context
from corem_ingress.sim.fleet import DeviceError
from corem_ingress.sim.lwm2m_device import CoapDtlsChannel
from tests.behaviour.drivers.base import CALL_TIMEOUT_S, Device, Driver, Outcome, Refused, Session
from tests.coap.conftest import CertSet, coap_section, provision_cert, provision_psk

CLOSE_NOTIFY = "close_notify"


def alert_answer(description: int) -> str:
    """How a refused handshake reads: ``DTLS alert access_denied``."""
    return f"DTLS alert {alert_name(description).split(' ')[0]}"


def received_alert(error: str) -> str:
    """The alert OpenSSL reports receiving (``... tlsv1 alert access denied``), as named by
    ``alert_answer``; ``DTLS failed`` when the handshake ended without one."""
    found = re.search(r"alert ([a-z ]+?)'", error)
    return f"DTLS alert {found.group(1).replace(' ', '_')}" if found else "DTLS failed"


def _not_found(_msg: Message) -> Message:
    return Message(code=Code.NOT_FOUND)  # the device serves nothing to the server


async def open_dtls(ctx: Any, port: int, timeout: float) -> AsyncDtlsClient:
    """A DTLS session, or ``Refused`` with the alert the handshake ended with."""
    try:
        dtls = await AsyncDtlsClient.connect(ctx, port, timeout=timeout)
    except TimeoutError:
        raise Refused("no answer") from None
    if not dtls.client.done:
        detail = str(dtls.client.failed)
        dtls.close()
        raise Refused(received_alert(detail), detail)
    return dtls


#: Said of a 5.03 that does not say when to retry (the device then waits CoAP's default
#: Max-Age, 60 s, instead of ``coap.unavailable_max_age_s``).
NO_MAX_AGE = " without Max-Age"


def answer_of(resp: Message) -> str:
    """The response code as CoAP writes it (a 5.03 without Max-Age says so)."""
    text = dotted(resp.code)
    if resp.code == Code.SERVICE_UNAVAILABLE and not resp.opt.max_age:
        text += NO_MAX_AGE
    return text


async def request(channel: CoapDtlsChannel, msg: Message, timeout: float) -> Outcome:
    try:
        resp = await channel.request(msg, timeout_s=timeout)
    except DeviceError as exc:
        # Closed by the server, or no answer at all: either way this session is done.
        return Outcome(False, "closed" if exc.cause == "closed" else "no answer", closed=True)
    return Outcome(resp.code == Code.CHANGED, answer_of(resp))


async def malformed_requests(
    channel: CoapDtlsChannel, path: tuple[str, ...], payload: bytes, cf: int | None
) -> tuple[str, ...]:
    """POST ``payload`` to ``path`` with an unimplemented critical option, then with a
    reserved Block1 size; the answers."""
    answers = []
    for bad in ("if_none_match", "block1"):
        msg = Message(code=Code.POST, payload=payload, content_format=cf)
        msg.opt.uri_path = path
        if bad == "if_none_match":
            msg.opt.if_none_match = True
        else:
            msg.opt.block1 = (0, False, 7)
        answers.append((await request(channel, msg, CALL_TIMEOUT_S)).answer)
    return tuple(answers)


class CoapSession(Session):
    def __init__(self, dtls: AsyncDtlsClient) -> None:
        self.dtls = dtls
        self.channel = CoapDtlsChannel(dtls, _not_found)
        self.channel.start()

    async def uplink(self, n: int, *, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        msg = Message(code=Code.POST, payload=b'{"n":%d}' % n)
        msg.opt.uri_path = ("up", "telemetry")
        return await request(self.channel, msg, timeout)

    async def ended_by_server(self, *, timeout: float) -> str | None:
        try:
            await self.dtls.wait_closed(timeout=timeout)
        except TimeoutError:
            return None
        return CLOSE_NOTIFY if self.dtls.client.closed else f"failed: {self.dtls.client.failed}"

    async def close(self) -> None:
        self.channel.close()


class CoapPskDriver(Driver):
    name = "coap-psk"
    metric_transport = "coap"
    listener_name = "coap"
    kind = CredentialKind.PSK
    fixtures = ("certs",)
    unstored_answer = Cause.STORAGE_UNAVAILABLE.coap
    retry_answers = frozenset({unstored_answer, "no answer", "closed"})
    revoked_answer = CLOSE_NOTIFY
    #: An unimplemented critical option (If-None-Match: RFC 7252 §5.4.1), then a Block1
    #: option with the reserved SZX 7 (RFC 7959 §2.2).
    bad_input_answers: ClassVar[tuple[str, ...]] = ("4.02", Cause.PROTOCOL_ERROR.coap)
    #: Extra sections of the node (the LwM2M driver adds its own).
    extra_sections: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def certs(self) -> CertSet:
        certs: CertSet = self.fx["certs"]
        return certs

    def sections(self) -> tuple[list[Any], dict[str, dict[str, Any]]]:
        return [coap.build], {"coap": coap_section(self.certs), **self.extra_sections}

    async def provision(self) -> Device:
        device_id, identity, key = await provision_psk(self.registry, self.tenant)
        return Device(self.tenant, device_id, (identity, key), device_id)

    def unknown(self) -> Device:
        # The form the registry assigns (tenant-prefixed), never provisioned.
        identity = f"{self.tenant}:{self.next_name()}"
        return Device(self.tenant, "", (identity, os.urandom(16).hex().encode()))

    def context(self, device: Device) -> Any:
        identity, key = device.credential
        return psk_context(identity.encode(), key)

    def refusal(self, cause: Cause) -> str:
        # Every PSK refusal is unknown_psk_identity (RFC 4279; adapters/dtls/authn.py).
        return alert_answer(ALERT_UNKNOWN_PSK_IDENTITY)

    async def _connect(self, device: Device, timeout: float) -> Session:
        return CoapSession(await open_dtls(self.context(device), self.port, timeout))

    async def bad_input(self, device: Device) -> tuple[str, ...]:
        session = await self.connect(device)
        assert isinstance(session, CoapSession)
        return await malformed_requests(session.channel, ("up", "telemetry"), b'{"n":1}', None)


class CoapCertDriver(CoapPskDriver):
    name = "coap-cert"
    kind = CredentialKind.X509

    async def provision(self) -> Device:
        issued, cert, key = self.certs.device(self.next_name())
        device_id = await provision_cert(self.registry, issued, self.tenant, ca=self.certs.ca)
        return Device(self.tenant, device_id, (str(cert), str(key)), issued.fingerprint)

    def unknown(self) -> Device:
        # Signed by the CA the tenant trusts (as provision() makes it), never registered.
        _issued, cert, key = self.certs.device(self.next_name())
        return Device(self.tenant, "", (str(cert), str(key)))

    def context(self, device: Device) -> Any:
        cert, key = device.credential
        return cert_context(cert, key, str(self.certs.ca_pem))

    def refusal(self, cause: Cause) -> str:
        return alert_answer(cause.dtls_alert)
