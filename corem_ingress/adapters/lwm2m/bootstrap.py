"""The LwM2M bootstrap server on the DTLS port (docs/provisioning.md).

A device holding a bootstrap credential (a psk claim that issues PSKs) sends
``POST /bs?ep=<endpoint>`` over its claim session. The endpoint is its hardware_id: the
claim enrols it (``Registry.enrol``: the device created, or a retry before first use
re-issued), the request is answered 2.04, then the device is configured with its own
credential and this server's URI (``lwm2m/bootstrap.py``: Delete, Write /0, Write /1,
Finish) over the same session. The device then registers normally (``/rd``) with its new
PSK. Refusals: 4.00 (no or bad ``ep``), 4.01 (claim unknown, revoked, expired), 4.03
(no uses left, or a claim that issues API keys), 4.09 (the credential is already in use),
4.29 (provisioning rate).

A device with a certificate of one of its tenant's auto-provisioning CAs bootstraps too
(``certificate_bootstrap_request``): the DTLS handshake already found or provisioned it by
JITP (``Registry.jit_provision``, atomic on (tenant, hardware_id)), so its session is the
device's. ``POST /bs?ep=`` is accepted when the CA auto-provisions for the session's tenant
and ``ep`` is the hardware_id the CA's template derives from the certificate (4.03 and
audited otherwise: a device must not bootstrap as another); the Security instance is
written in Certificate mode (its own certificate, this server's certificate, no new
secret: one device, one live credential), then Server and Finish, over the session the
device then registers on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from aiocoap import Message
from aiocoap.numbers.codes import Code
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress.adapters.coap.endpoint import error_response, response
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.core.errors import IngressError, PermissionDenied, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.lwm2m.bootstrap import BootstrapStep, bootstrap_steps, endpoint_of

if TYPE_CHECKING:
    from corem_ingress.adapters.coap.listener import CoapListener
    from corem_ingress.adapters.coap.site import DeviceSession

log = structlog.get_logger("corem.lwm2m")

#: How long each bootstrap step waits for the device's answer.
STEP_TIMEOUT_S = 10.0
_METHODS = {"DELETE": Code.DELETE, "PUT": Code.PUT, "POST": Code.POST}
_tasks: set[asyncio.Task[None]] = set()


async def bootstrap_request(
    listener: CoapListener, addr: Address, claim_identity: str, msg: Message
) -> Message:
    if msg.code != Code.POST:
        return response(Code.METHOD_NOT_ALLOWED)
    services = listener.services
    registry = services.registry
    cfg = services.config.provisioning
    try:
        endpoint = endpoint_of(list(msg.opt.uri_query))
        claim = await registry.resolve_claim_psk(claim_identity)
        await registry.check_provisioning_rate(
            claim, per_claim=cfg.claim_rate_per_minute, per_tenant=cfg.tenant_rate_per_minute
        )
        record = await registry.get_claim(claim.tenant_id, claim.claim_id)
        if record.credential_kind is not CredentialKind.PSK:
            raise PermissionDenied("a bootstrap claim must issue PSKs (LwM2M runs on DTLS)")
        enrolled = await registry.enrol(claim, endpoint)
    except IngressError as exc:
        log.info("lwm2m.bootstrap_refused", peer=addr[0], code=exc.code, reason=exc.reason)
        return error_response(exc.coap_code)
    issued = enrolled.result.psk
    assert issued is not None
    steps = bootstrap_steps(
        server_uri=_server_uri(listener),
        psk_identity=issued.psk_identity,
        psk=issued.psk,
        lifetime_s=cfg.bootstrap_lifetime_s,
    )
    task = asyncio.get_running_loop().create_task(
        _configure(listener, addr, steps, issued.psk_identity)
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    log.info(
        "lwm2m.bootstrap_started",
        tenant=claim.tenant_id,
        device=enrolled.result.device.device_id,
        reissued=enrolled.reissued,
    )
    return response(Code.CHANGED)


async def certificate_bootstrap_request(
    listener: CoapListener, session: DeviceSession, msg: Message
) -> Message:
    """``POST /bs?ep=`` on a device's certificate session (module doc)."""
    if msg.code != Code.POST:
        return response(Code.METHOD_NOT_ALLOWED)
    services = listener.services
    credential = session.credential
    addr = session.addr
    der = listener.peer_certificate(addr)
    try:
        if credential is None or credential.kind is not CredentialKind.X509 or der is None:
            raise PermissionDenied("bootstrap needs a psk claim or a certificate of a CA")
        endpoint = endpoint_of(list(msg.opt.uri_query))
        ident = credential.identity
        await services.registry.bootstrap_by_certificate(
            ident.tenant_id, ident.device_id, der, endpoint
        )
        server_certificate = _server_certificate(services.config.coap.server_cert)
    except IngressError as exc:
        log.info("lwm2m.bootstrap_refused", peer=addr[0], code=exc.code, reason=exc.reason)
        return error_response(exc.coap_code)
    steps = bootstrap_steps(
        server_uri=_server_uri(listener),
        client_certificate=der,
        server_certificate=server_certificate,
        lifetime_s=services.config.provisioning.bootstrap_lifetime_s,
    )
    task = asyncio.get_running_loop().create_task(
        _configure_certificate(listener, addr, steps, ident.device_id)
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    log.info("lwm2m.bootstrap_started", tenant=ident.tenant_id, device=ident.device_id)
    return response(Code.CHANGED)


def _server_uri(listener: CoapListener) -> str:
    cfg = listener.services.config
    return cfg.provisioning.bootstrap_server_uri or f"coaps://{cfg.coap.host}:{listener.port}"


def _server_certificate(path: str) -> bytes:
    """This server's certificate (DER), what the device is to trust."""
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        raise Unavailable("the server certificate is unreadable") from None
    return cert.public_bytes(Encoding.DER)


async def _configure_certificate(
    listener: CoapListener, addr: Address, steps: list[BootstrapStep], device_id: str
) -> None:
    await asyncio.sleep(0)  # the 2.04 to the Bootstrap-Request goes out first
    for step in steps:
        if not await _step(listener, addr, step, device_id):
            listener.close_session(addr)  # not bootstrapped: it must start over
            return
    log.info("lwm2m.bootstrap_finished", device=device_id)


async def _configure(
    listener: CoapListener, addr: Address, steps: list[BootstrapStep], psk_identity: str
) -> None:
    await asyncio.sleep(0)  # the 2.04 to the Bootstrap-Request goes out first
    *writes, finish = steps
    for step in writes:
        if not await _step(listener, addr, step, psk_identity):
            return
    # The device is about to hold its own credential, and may register over this very
    # session as soon as Finish is answered (Wakaama does when both servers share an
    # address): before Finish, the session becomes the device's, authenticated by its own
    # PSK through the resolver (which records its first use).
    try:
        resolved = await listener.services.resolver.resolve_psk(psk_identity)
    except IngressError as exc:
        log.info("lwm2m.bootstrap_failed", step="adopt", reason=exc.reason)
        listener.close_session(addr)
        return
    credential = Credential(CredentialKind.PSK, psk_identity, resolved.identity)
    if not listener.adopt_claim_session(addr, credential):
        return
    if not await _step(listener, addr, finish, resolved.identity.device_id):
        listener.close_session(addr)  # not bootstrapped: it must start over
        return
    log.info("lwm2m.bootstrap_finished", device=resolved.identity.device_id)


async def _step(listener: CoapListener, addr: Address, step: BootstrapStep, who: str) -> bool:
    msg = Message(code=_METHODS[step.method], uri_path=step.uri_path, payload=step.payload)
    if step.content_format is not None:
        msg.opt.content_format = step.content_format
    where = f"{step.method} /{'/'.join(step.uri_path)}"
    try:
        reply = await listener.request(addr, msg, response_timeout=STEP_TIMEOUT_S)
    except Exception as exc:  # timeout, session gone: the device bootstraps again
        log.info("lwm2m.bootstrap_failed", device=who, step=where, error=repr(exc))
        return False
    if not reply.code.is_successful():
        log.info("lwm2m.bootstrap_failed", device=who, step=where, code=reply.code.dotted)
        return False
    return True
