"""A registration and its DTLS session (issues 11 and 21), end to end: the simulator's LwM2M
client (real DTLS over loopback) as the device, ``openssl s_client`` as a stray second
session, a real node and the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from structlog.testing import capture_logs

from corem_ingress.lwm2m import operations as ops
from tests.lwm2m.conftest import WAIT_S, Provisioned, provision, until

pytestmark = pytest.mark.integration


def _listener(n: Any) -> Any:
    return next(x for x in n.node.listeners if x.name == "coap")


def _session_of(n: Any, device_id: str) -> list[Any]:
    return [
        s
        for s in _listener(n).sessions.values()
        if s.credential is not None and s.credential.identity.device_id == device_id
    ]


@contextlib.asynccontextmanager
async def stray_session(n: Any, p: Provisioned) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A second DTLS session with the device's credential: ``openssl s_client``, stdin held
    open; closing it sends close_notify."""
    assert p.psk_identity is not None and p.psk is not None
    before = len(_session_of(n, p.device_id))
    proc = subprocess.Popen(
        [
            "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{n.port}",
            "-psk_identity", p.psk_identity, "-psk", p.psk.hex(),
            "-cipher", "PSK-AES128-GCM-SHA256",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until(lambda: len(_session_of(n, p.device_id)) == before + 1)
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: s_client sends close_notify and exits
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), WAIT_S)
            except TimeoutError:
                proc.kill()
                proc.wait()


async def _read_ok(n: Any, device_id: str) -> None:
    r = await n.op(device_id, "read", path="/3/0/0", timeout_s=5)
    assert r.status == 200 and r.body["records"][0]["value"] == "CORE-M", r.body


async def test_a_stray_session_with_the_same_credential_takes_nothing_over(
    lwm2m_node: Any,
) -> None:
    """Issue 21.1: a second session (anyone holding the key) neither receives the device's
    requests nor drops its observations, while open or after it ended; a stray session's
    refused Register (4.03) changes nothing either."""
    n = await lwm2m_node(tenant_observe_paths={"acme": "/3303/0"})
    p = await provision(n.registry, n.certs, "psk")
    other = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    await until(lambda: len(dev.observed) == 1)
    await n.uplinks(at_least=1)
    reg_id = dev.location[1]
    async with stray_session(n, p):
        await _read_ok(n, p.device_id)
        await dev.send(1)  # a notification on the device's own session
        await n.uplinks(at_least=2)
        assert (await n.registration(p.device_id)).body["reachable"] is True
    # The stray session said close_notify and is gone: the device is untouched.
    await until(lambda: len(_session_of(n, p.device_id)) == 1)
    await _read_ok(n, p.device_id)
    await dev.send(2)
    ups = await n.uplinks(at_least=3)
    assert ups[-1]["payload"]["registration_id"] == reg_id
    # Another session of the same credential whose Register is refused (4.03).
    stray = n.device(p)
    await stray.open_session()
    wrong = [f"ep={other.hardware_id}", "lt=60", "lwm2m=1.1", "b=U"]
    assert (await stray.register(query=wrong)).code == Code.FORBIDDEN
    await stray.close()
    await until(lambda: len(_session_of(n, p.device_id)) == 1)
    await _read_ok(n, p.device_id)
    assert len(dev.observed) == 1
    reg = (await n.registration(p.device_id)).body
    assert reg["registration_id"] == reg_id and reg["reachable"] is True


async def test_an_update_over_a_new_session_moves_the_registration_there(
    lwm2m_node: Any,
) -> None:
    """The registration follows the session of its latest Update (a rebooted device), and the
    old session's observations are made again over the new one."""
    n = await lwm2m_node(tenant_observe_paths={"acme": "/3303/0"})
    p = await provision(n.registry, n.certs, "psk")
    first = n.device(p)
    await first.connect()
    await until(lambda: len(first.observed) == 1)
    before = {s.session_id for s in _session_of(n, p.device_id)}
    second = n.device(p)
    await second.open_session()
    (second_sid,) = {s.session_id for s in _session_of(n, p.device_id)} - before
    await _read_ok(n, p.device_id)  # the second session alone changes nothing
    assert not any(r[1] == "/3/0/0" for r in second.requests)
    second.location = first.location
    assert (await second.update()).code == Code.CHANGED
    await until(lambda: len(second.observed) == 1)
    assert (await n.registration(p.device_id)).body["session_id"] == second_sid
    first_reads = sum(r[1] == "/3/0/0" for r in first.requests)
    await _read_ok(n, p.device_id)
    assert any(r[1] == "/3/0/0" for r in second.requests)
    assert sum(r[1] == "/3/0/0" for r in first.requests) == first_reads


async def test_the_session_lives_as_long_as_the_registration(lwm2m_node: Any) -> None:
    """Issue 11.11: idle timeout 0.5 s, lifetime 60 s: after 1.5 s of silence the device is
    still readable; the registration says whether it is reachable; a session that ended
    makes it unreachable (503 at once, not 404) until an Update over a new session."""
    n = await lwm2m_node(observe_paths=[], coap_extra={"idle_timeout_s": 0.5})
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p, lifetime_s=60)
    await dev.connect()
    await asyncio.sleep(1.5)  # silence past the DTLS idle timeout (its sweep runs every 0.125 s)
    assert not dev.closed.is_set()
    await _read_ok(n, p.device_id)
    assert (await n.registration(p.device_id)).body["reachable"] is True
    # The session ends without a De-register (here: closed by the server).
    (session,) = _session_of(n, p.device_id)
    _listener(n).close_session(session.addr)
    await until(dev.closed.is_set)

    async def unreachable() -> bool:
        return (await n.registration(p.device_id)).body["reachable"] is False

    await until(unreachable)
    r = await n.op(p.device_id, "read", path="/3/0/0", timeout_s=5)
    assert r.status == 503 and "not reachable" in r.body["error"]["message"]
    again = n.device(p)
    await again.open_session()
    again.location = dev.location
    assert (await again.update()).code == Code.CHANGED
    assert (await n.registration(p.device_id)).body["reachable"] is True
    await _read_ok(n, p.device_id)


async def test_deregister_closes_the_session(lwm2m_node: Any) -> None:
    """Issue 21: after De-register the session is closed by the server (some clients send
    no close_notify)."""
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    with capture_logs() as logs:
        assert (await dev.deregister()).code == Code.DELETED
        await until(dev.closed.is_set)
    assert _session_of(n, p.device_id) == []
    assert any(e["event"] == "lwm2m.deregistered_session_closed" for e in logs)
    assert any(
        e["event"] == "coap.session_closed" and e["cause"] == "closed_by_server" for e in logs
    )


async def test_operator_cancel_keeps_the_automatic_observation(lwm2m_node: Any) -> None:
    """Issue 21.3: an operator's Observe of a path the tenant's feed observes shares it; the
    operator's Cancel-Observe leaves the feed running at the device."""
    n = await lwm2m_node(tenant_observe_paths={"acme": "/3303/0"})
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    await until(lambda: len(dev.observed) == 1)
    (token,) = dev.observed
    r = await n.op(p.device_id, "observe", path="/3303/0")
    assert r.status == 200 and r.body["code"] == "2.05"
    assert list(dev.observed) == [token]  # one observation at the device, not two
    r = await n.op(p.device_id, "cancel-observe", path="/3303/0")
    assert r.status == 200 and r.body["code"] == "2.05" and r.body["records"]
    assert list(dev.observed) == [token]  # the automatic feed is still observed
    assert not any(obs == 1 for _m, _p, obs in dev.requests)  # no Observe=1 was sent
    # Cancelling again: the operator has no observation (the feed is not the operator's).
    assert (await n.op(p.device_id, "cancel-observe", path="/3303/0")).status == 404
    before = len(await n.uplinks(at_least=1))
    await dev.send(3)
    ups = await n.uplinks(at_least=before + 1)
    assert ups[-1]["payload"]["path"] == "/3303/0"
    # An operator's own observation of another path is cancelled at the device.
    assert (await n.op(p.device_id, "observe", path="/3/0/9")).status == 200
    assert len(dev.observed) == 2
    assert (await n.op(p.device_id, "cancel-observe", path="/3/0/9")).status == 200
    assert list(dev.observed) == [token]


async def test_read_asks_for_the_announced_format_and_refuses_what_cannot_be_decoded(
    lwm2m_node: Any,
) -> None:
    """Issues 11.10 and 21.4: Read / Observe carry the Accept the client announced; an Accept
    this server cannot decode (LwM2M CBOR 11544) is refused before the device is asked."""
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    seen: list[int | None] = []
    assert dev.channel is not None
    answer = dev.channel._handler

    def recording(msg: Message) -> Message:
        seen.append(None if msg.opt.accept is None else int(msg.opt.accept))
        return answer(msg)  # type: ignore[no-any-return]

    dev.channel._handler = recording
    await _read_ok(n, p.device_id)
    assert seen == [ops.CF_SENML_CBOR]  # the sim announces 112, 110 and 11542
    r = await n.op(p.device_id, "read", path="/3/0", accept=11544)
    assert r.status == 400 and "11544" in r.body["error"]["message"]
    assert seen == [ops.CF_SENML_CBOR]  # the device was not asked


@pytest.mark.parametrize("code", [Code.INTERNAL_SERVER_ERROR, Code.NOT_IMPLEMENTED])
async def test_a_device_server_error_is_502_with_its_code(lwm2m_node: Any, code: Code) -> None:
    """Issue 11.10: a device's 5.00 / 5.01 is the device's failure: 502 DEVICE_ERROR with the
    CoAP code, not the retryable 503."""
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    assert dev.channel is not None
    dev.channel._handler = lambda msg: Message(code=code)
    r = await n.op(p.device_id, "read", path="/3/0/0", timeout_s=5)
    dotted = f"{int(code) >> 5}.{int(code) & 0x1F:02d}"
    assert r.status == 502, r.body
    assert r.body["error"]["code"] == "DEVICE_ERROR" and r.body["error"]["coap_code"] == dotted


async def test_lwm2m_1_2_registers_at_once(lwm2m_node: Any) -> None:
    """Issue 21: a 1.2-first client is registered (as 1.1-compatible), no 4.12 round trip."""
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.open_session()
    query = [f"ep={p.hardware_id}", "lt=60", "lwm2m=1.2", "b=U"]
    assert (await dev.register(query=query)).code == Code.CREATED
    assert (await n.registration(p.device_id)).body["version"] == "1.2"
    await _read_ok(n, p.device_id)


async def test_block1_refusals_agree_on_up_and_rd(lwm2m_node: Any) -> None:
    """Issue 11.9: one Block1 receiver for the device site and LwM2M: the same refusal for the
    same mistake (before: a short non-final block was 4.00 on /up, 4.13 on /rd)."""
    n = await lwm2m_node(observe_paths=[], coap_extra={"max_body_bytes": 1024})
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.open_session()
    assert dev.channel is not None

    async def post(path: tuple[str, ...], num: int, more: bool, payload: bytes) -> Message:
        msg = Message(code=Code.POST, payload=payload)
        msg.opt.uri_path = path
        if path == ("rd",):
            msg.opt.uri_query = tuple(dev.client.register_query())
            msg.opt.content_format = 40
        msg.opt.block1 = (num, more, 2)  # 64-byte blocks
        assert dev.channel is not None
        return await dev.channel.request(msg)

    limit = 1024
    for path in (("up", "telemetry"), ("rd",)):
        short = await post(path, 0, True, b"x" * 10)  # a non-final block must be 64 bytes
        missing = await post(path, 3, True, b"x" * 64)  # no blocks 0-2
        assert (short.code, missing.code) == (Code.BAD_REQUEST, Code.REQUEST_ENTITY_INCOMPLETE)
        num, resp = 0, None
        while num * 64 <= limit:  # one block past coap.max_body_bytes: 4.13 with Size1
            resp = await post(path, num, True, b"y" * 64)
            if resp.code != Code.CONTINUE:
                break
            num += 1
        assert resp is not None and resp.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert resp.opt.size1 == limit
    assert (await n.registration(p.device_id)).status == 404


async def test_registration_lifecycle_is_logged(lwm2m_node: Any, clock: Any) -> None:
    """Issue 11.12: Register, Update, De-register and expiry are info-level log lines."""
    n = await lwm2m_node(clock=clock, observe_paths=[])
    lwm2m = _listener(n).lwm2m
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p, lifetime_s=60)
    with capture_logs() as logs:
        await dev.connect()
        assert (await dev.update()).code == Code.CHANGED
        assert (await dev.deregister()).code == Code.DELETED
        again = n.device(p, lifetime_s=60)
        await again.connect()
        clock.advance(61)
        expired = await lwm2m.expire(clock())
    assert [r.device_id for r in expired] == [p.device_id]
    events: Callable[[str], list[Any]] = lambda name: [e for e in logs if e["event"] == name]  # noqa: E731
    for name in ("lwm2m.registered", "lwm2m.updated", "lwm2m.deregistered", "lwm2m.expired"):
        assert events(name) and all(e["log_level"] == "info" for e in events(name)), name
    assert events("lwm2m.registered")[0]["endpoint"] == p.hardware_id
    assert events("lwm2m.expired")[0]["registration"] == again.location[1]


async def test_nosec_refusals_are_logged(lwm2m_node: Any) -> None:
    """Issue 11.12: a NoSec request refused before it reaches the registrar is logged."""
    from corem_ingress.sim.devices import Target

    n = await lwm2m_node(allow_nosec=True, nosec_port=0, nosec_tenant="acme", observe_paths=[])
    nosec = _listener(n).lwm2m.nosec
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p, nosec=True)
    dev.target = Target("127.0.0.1", nosec.port)
    await dev.open_session()
    with capture_logs() as logs:
        assert (await dev.update(location=("rd", "whatever"))).code == Code.UNAUTHORIZED
        unknown = ["ep=SN-nobody", "lt=60", "lwm2m=1.1", "b=U"]
        assert (await dev.register(query=unknown)).code == Code.FORBIDDEN
    refused = [e for e in logs if e["event"] == "lwm2m.nosec_refused"]
    assert [e["code"] for e in refused] == ["4.01", "4.03"]
    assert all(e["log_level"] == "info" for e in refused)


async def test_a_registration_that_moved_to_another_node_is_not_reported_expired(
    lwm2m_node: Any, clock: Any
) -> None:
    """The node a device left (it updated over a session with another node) drops its copy
    of the registration quietly at the old expiry: no false ``lwm2m.expired``, and the old
    session is no longer kept open for it."""
    a = await lwm2m_node(clock=clock, tenant_observe_paths={"acme": "/3303/0"})
    b = await lwm2m_node(clock=clock, observe_paths=[])
    p = await provision(a.registry, a.certs, "psk")
    on_a = a.device(p, lifetime_s=60)
    await on_a.connect()
    await until(lambda: len(on_a.observed) == 1)
    clock.advance(30)
    on_b = b.device(p, port=b.port)
    await on_b.open_session()
    on_b.location = on_a.location
    assert (await on_b.update()).code == Code.CHANGED
    assert (await a.registration(p.device_id)).body["node_id"] == b.node.config.node_id
    clock.advance(31)  # past the lifetime a knows of, within the one b set
    lwm2m_a = _listener(a).lwm2m
    with capture_logs() as logs:
        assert await lwm2m_a.expire(clock()) == []
    assert not [e for e in logs if e["event"] == "lwm2m.expired"]
    assert len(lwm2m_a.observations) == 0 and lwm2m_a._regs == {}
    await _read_ok(a, p.device_id)  # answered over b's session
