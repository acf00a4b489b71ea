"""The LwM2M server end to end: the simulator's LwM2M client over real DTLS (loopback),
a real node (CoAP listener with /rd and /dp mounted, admin API) and the real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from corem_ingress.sim.fleet import DeviceError
from tests.lwm2m.conftest import provision, until

pytestmark = pytest.mark.integration


async def test_register_psk_update_deregister(lwm2m_node: Any) -> None:
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    assert dev.location[0] == "rd" and len(dev.location) == 2
    reply = await n.registration(p.device_id)
    assert reply.status == 200
    reg = reply.body
    assert reg["endpoint"] == p.hardware_id and reg["security"] == "psk"
    assert reg["registration_id"] == dev.location[1]
    assert reg["node_id"] == n.node.config.node_id
    assert reg["credential_id"] == p.credential_id
    assert {o["path"] for o in reg["objects"]["objects"]} == {"/1/0", "/3/0", "/3303/0"}

    response = await dev.update(lifetime_s=120)
    assert response.code == Code.CHANGED
    assert (await n.registration(p.device_id)).body["lifetime_s"] == 120

    response = await dev.deregister()
    assert response.code == Code.DELETED
    assert (await n.registration(p.device_id)).status == 404


async def test_register_with_a_certificate(lwm2m_node: Any) -> None:
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "x509")
    dev = n.device(p, version="1.0")
    await dev.connect()
    reg = (await n.registration(p.device_id)).body
    assert reg["security"] == "x509" and reg["version"] == "1.0"
    assert reg["credential_id"] == p.credential_id
    # A 1.0 client answers in TLV: decoded into the one JSON shape.
    r = await n.op(p.device_id, "read", path="/3/0")
    assert r.status == 200, r.body
    values = {x["path"]: (x["type"], x["value"]) for x in r.body["records"]}
    assert values["/3/0/0"] == ("string", "CORE-M") and values["/3/0/9"] == ("integer", 100)
    # Write to a 1.0 client: TLV for an instance, text for a single resource.
    for path, body in (
        ("/1/0", [{"path": "/1/0/2", "value": 7}, {"path": "/1/0/3", "value": 70}]),
        ("/1/0/2", [{"path": "/1/0/2", "value": 8}]),
    ):
        r = await n.op(p.device_id, "write", path=path, values=body, replace=False)
        assert r.status == 200 and r.body["code"] == "2.04", r.body
    r = await n.op(p.device_id, "read", path="/1/0/2", accept=0)
    assert r.body["records"][0]["value"] == 8


async def test_refusals_store_nothing(lwm2m_node: Any, redis: Any) -> None:
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "psk")
    other = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.open_session()
    # Another device's endpoint name with this credential: 4.03, nothing stored.
    wrong = [f"ep={other.hardware_id}", "lt=60", "lwm2m=1.1", "b=U"]
    assert (await dev.register(query=wrong)).code == Code.FORBIDDEN
    # Malformed link format: 4.00.
    assert (await dev.register(payload=b"</3/0>,<bad")).code == Code.BAD_REQUEST
    assert (await dev.register(payload=b"</3/0>;;")).code == Code.BAD_REQUEST
    assert await redis.keys("corem*lwm2m*") == []
    assert (await n.registration(p.device_id)).status == 404
    assert (await n.registration(other.device_id)).status == 404
    # Update / De-register of an unknown registration id: 4.04.
    assert (await dev.update(location=("rd", "nosuchreg123"))).code == Code.NOT_FOUND
    dev.location = ("rd", "nosuchreg123")
    assert (await dev.deregister()).code == Code.NOT_FOUND
    # Register for real, then another device's session cannot update it.
    assert (await dev.register()).code == Code.CREATED
    intruder = n.device(other)
    await intruder.open_session()
    assert (await intruder.update(location=dev.location)).code == Code.NOT_FOUND
    assert (await n.registration(other.device_id)).status == 404


async def test_expiry(lwm2m_node: Any, clock: Any) -> None:
    n = await lwm2m_node(clock=clock)
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p, lifetime_s=60)
    await dev.connect()
    assert (await n.registration(p.device_id)).status == 200
    clock.advance(61)
    assert (await n.registration(p.device_id)).status == 404
    assert (await dev.update()).code == Code.NOT_FOUND
    # Registering again works.
    assert (await dev.register()).code == Code.CREATED
    assert (await n.registration(p.device_id)).status == 200


async def test_observe_notifications_and_send_become_uplinks(lwm2m_node: Any) -> None:
    n = await lwm2m_node(tenant_observe_paths={"acme": "/3303/0,/3/0/9"})
    p = await provision(n.registry, n.certs, "x509")
    dev = n.device(p)
    await dev.connect()
    # The tenant's configured paths are observed: their first values are uplinks.
    await until(lambda: len(dev.observed) == 2)
    assert {str(o.path) for o in dev.observed.values()} == {"/3303/0", "/3/0/9"}
    first = await n.uplinks(at_least=2)
    assert {u["payload"]["path"] for u in first} == {"/3303/0", "/3/0/9"}
    assert all(u["device_id"] == p.device_id and u["payload"]["source"] == "notify" for u in first)

    await dev.send(6)  # temperature 21.5 -> a notification of /3303/0
    ups = await n.uplinks(at_least=3)
    note = ups[2]["payload"]
    assert note["path"] == "/3303/0" and note["endpoint"] == p.hardware_id
    values = {r["path"]: r["value"] for r in note["records"]}
    assert values["/3303/0/5700"] == 21.5

    response = await dev.send_dp(["/3303/0/5700", "/3/0/9"])
    assert response.code == Code.CHANGED
    ups = await n.uplinks(at_least=4)
    sent = ups[3]["payload"]
    assert sent["source"] == "send" and sent["path"] is None
    assert {r["path"] for r in sent["records"]} == {"/3303/0/5700", "/3/0/9"}


async def test_send_needs_a_registration(lwm2m_node: Any) -> None:
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.open_session()
    assert (await dev.send_dp()).code == Code.NOT_FOUND


async def test_send_over_the_device_rate_gets_4_29_and_is_not_stored(lwm2m_node: Any) -> None:
    n = await lwm2m_node(
        observe_paths=[], limits={"per_device_msgs_per_s": 0.01, "per_device_burst": 1}
    )
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    assert (await dev.send_dp()).code == Code.CHANGED
    refused = await dev.send_dp()
    assert refused.code == Code.TOO_MANY_REQUESTS
    assert refused.opt.max_age is not None and refused.opt.max_age >= 1
    assert len(await n.uplinks(at_least=1)) == 1  # only the first Send was stored


async def test_operator_operations_through_the_admin_api(lwm2m_node: Any) -> None:
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    d = p.device_id

    r = await n.op(d, "read", path="/3/0/0")
    assert r.status == 200, r.body
    assert r.body["code"] == "2.05" and r.body["records"][0]["value"] == "CORE-M"
    r = await n.op(d, "read", path="/3303/0")
    assert {x["path"] for x in r.body["records"]} >= {"/3303/0/5700", "/3303/0/5701"}

    # Write the lifetime: the client answers 2.04 and announces it in an Update.
    r = await n.op(d, "write", path="/1/0/1", values=[{"path": "/1/0/1", "value": 90}])
    assert r.status == 200 and r.body["code"] == "2.04", r.body

    async def updated() -> bool:
        return bool((await n.registration(d)).body["lifetime_s"] == 90)

    await until(updated)
    r = await n.op(d, "execute", path="/3/0/4")
    assert r.status == 200 and r.body["code"] == "2.04"
    r = await n.op(d, "discover", path="/3303/0")
    assert r.status == 200
    assert "</3303/0/5700>" in {link["target"] for link in r.body["links"]} or any(
        link["target"].endswith("/3303/0/5700") for link in r.body["links"]
    )

    # Observe by an operator: the answer now, then notifications as uplinks; then cancel.
    r = await n.op(d, "observe", path="/3303/0/5700")
    assert r.status == 200 and r.body["records"][0]["path"] == "/3303/0/5700"
    await dev.send(1)
    ups = await n.uplinks(at_least=1)
    assert ups[-1]["payload"]["path"] == "/3303/0/5700"
    r = await n.op(d, "cancel-observe", path="/3303/0/5700")
    assert r.status == 200 and r.body["code"] == "2.05"
    assert dev.observed == {}
    assert (await n.op(d, "cancel-observe", path="/3303/0/5700")).status == 404

    # The device's refusals, and the operator's mistakes.
    assert (await n.op(d, "read", path="/3/0/4")).status == 405  # executable
    assert (await n.op(d, "read", path="/3/0/99")).status == 404
    assert (await n.op(d, "execute", path="/3/0/0")).status == 400
    assert (await n.op(d, "read", path="3/0")).status == 400
    bad_write = await n.op(d, "write", path="/3/0/0", values=[{"path": "/3/0/0", "value": "x"}])
    assert bad_write.status == 400  # Manufacturer is read-only
    # Tenant-scoped: another tenant's operator sees nothing.
    assert (await n.registration(d, tenant="globex")).status == 404
    assert (await n.op(d, "read", tenant="globex", path="/3/0/0")).status == 404


async def test_operator_request_times_out(lwm2m_node: Any) -> None:
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    assert dev.channel is not None
    dev.channel._handler = lambda msg: None  # a device that stops answering

    def silent(data: bytes) -> None:
        return None

    dev.channel._received = silent  # type: ignore[method-assign]
    r = await n.op(p.device_id, "read", path="/3/0/0", timeout_s=1)
    assert r.status == 503 and "did not answer" in r.body["error"]["message"]


async def test_revocation_closes_the_session_and_removes_the_registration(
    lwm2m_node: Any,
) -> None:
    n = await lwm2m_node()
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    assert (await n.registration(p.device_id)).status == 200
    revoked = await n.api.request("DELETE", f"/api/v1/devices/{p.device_id}/psk", tenant="acme")
    assert revoked.status == 200
    await until(dev.closed.is_set)

    async def gone() -> bool:
        return bool((await n.registration(p.device_id)).status == 404)

    await until(gone)
    # The revoked credential cannot come back.
    again = n.device(p)
    with pytest.raises(DeviceError, match=r"refused|timeout"):
        await again.connect()


async def test_simulator_fleet_of_lwm2m_devices(lwm2m_node: Any) -> None:
    """The fleet runner drives the LwM2M client (``simulate --transport lwm2m``'s device)."""
    from corem_ingress.core.identity import CredentialKind
    from corem_ingress.sim.cli import SUPPORTED, _device_factory
    from corem_ingress.sim.devices import Target
    from corem_ingress.sim.fleet import Fleet, FleetSpec
    from corem_ingress.sim.provision import SimCredential

    assert SUPPORTED["lwm2m"] == ("psk", "x509")
    n = await lwm2m_node(observe_paths=["/3303/0"])
    creds = []
    for i, kind in enumerate(("psk", "x509", "psk")):
        p = await provision(n.registry, n.certs, kind)
        creds.append(
            SimCredential(
                i, p.hardware_id, p.device_id, kind, p.credential_id,
                psk_identity=p.psk_identity, psk_hex=p.psk.hex() if p.psk else None,
                cert_path=p.cert, key_path=p.key,
            )
        )  # fmt: skip
    target = Target("127.0.0.1", n.port, str(n.certs.ca_pem))
    make_psk = _device_factory("lwm2m", CredentialKind.PSK, target, creds)
    spec = FleetSpec(devices=3, ramp_per_s=50, rate_per_device=5, duration_s=1.5, grace_s=3)
    summary = await Fleet(spec, make_psk, progress=None).run()
    assert summary["devices_connected"] == 3 and summary["errors"] == {}
    sent = summary["messages_delivered"]
    assert isinstance(sent, int) and sent >= 6
    # Each message is a notification of the observed /3303/0 (plus the 3 first values).
    ups = await n.uplinks(at_least=3 + sent)
    assert {u["device_id"] for u in ups} == {c.device_id for c in creds}
    assert {u["payload"]["source"] for u in ups} == {"notify"}


async def test_blockwise_register(lwm2m_node: Any) -> None:
    """A Register whose object list spans several Block1 blocks (RFC 7959)."""
    from aiocoap import Message

    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.open_session()
    assert dev.channel is not None
    body = ("</1/0>,</3/0>," + ",".join(f"</3303/{i}>" for i in range(80))).encode()
    size = 256
    blocks = [body[i : i + size] for i in range(0, len(body), size)]
    assert len(blocks) >= 3
    for num, chunk in enumerate(blocks):
        msg = Message(code=Code.POST, payload=chunk)
        msg.opt.uri_path = ("rd",)
        msg.opt.uri_query = tuple(dev.client.register_query())
        msg.opt.content_format = 40
        msg.opt.block1 = (num, num < len(blocks) - 1, 4)
        response = await dev.channel.request(msg)
        if num < len(blocks) - 1:
            assert response.code == Code.CONTINUE
        else:
            assert response.code == Code.CREATED
            assert response.opt.block1.block_number == num
    reg = (await n.registration(p.device_id)).body
    assert len(reg["objects"]["objects"]) == 82
    # A block out of sequence: 4.08, nothing stored for it.
    msg = Message(code=Code.POST, payload=b"x" * size)
    msg.opt.uri_path = ("rd",)
    msg.opt.block1 = (2, True, 4)
    assert (await dev.channel.request(msg)).code == Code.REQUEST_ENTITY_INCOMPLETE


async def test_nosec_only_when_enabled_in_a_dev_config(lwm2m_node: Any) -> None:
    """Off by default (no plain-UDP port at all); enabled, a device of the dev tenant
    registers over coap:// by its endpoint name and works as over DTLS."""
    from corem_ingress.sim.devices import Target

    default = await lwm2m_node()
    assert next(x for x in default.node.listeners if x.name == "coap").lwm2m.nosec is None

    n = await lwm2m_node(
        allow_nosec=True, nosec_port=0, nosec_tenant="acme", observe_paths=["/3303/0"]
    )
    nosec = next(x for x in n.node.listeners if x.name == "coap").lwm2m.nosec
    assert nosec is not None and nosec.port != n.port
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p, nosec=True)
    dev.target = Target("127.0.0.1", nosec.port)
    await dev.open_session()
    # Update before any Register from this address: 4.01.
    assert (await dev.update(location=("rd", "whatever"))).code == Code.UNAUTHORIZED
    # An endpoint name that is no device of the dev tenant: 4.03.
    unknown = ["ep=SN-nobody", "lt=60", "lwm2m=1.1", "b=U"]
    assert (await dev.register(query=unknown)).code == Code.FORBIDDEN
    assert (await dev.register()).code == Code.CREATED
    reg = (await n.registration(p.device_id)).body
    assert reg["security"] == "nosec" and reg["endpoint"] == p.hardware_id
    ups = await n.uplinks(at_least=1)
    assert ups[0]["payload"]["path"] == "/3303/0"
    r = await n.op(p.device_id, "read", path="/3/0/0")
    assert r.status == 200 and r.body["records"][0]["value"] == "CORE-M"
    assert (await dev.deregister()).code == Code.DELETED


async def test_a_simulated_device_stays_registered_past_its_lifetime(lwm2m_node: Any) -> None:
    """The simulator's device Updates at half its lifetime, like a real client: the one it
    registered with, or a shorter one an operator wrote to /1/0/1. Before, a run longer than
    the lifetime lost every registration (``lwm2m.expired``) and its observations."""
    n = await lwm2m_node(expiry_grace_s=0)
    short = await provision(n.registry, n.certs, "psk")
    written = await provision(n.registry, n.certs, "psk")
    devices = {short.device_id: n.device(short, lifetime_s=3), written.device_id: n.device(written)}
    for dev in devices.values():
        await dev.connect()
    values = [{"path": "/1/0/1", "value": 3}]
    assert (await n.op(written.device_id, "write", path="/1/0/1", values=values)).status == 200
    before = {d: (await n.registration(d)).body for d in devices}
    await asyncio.sleep(7)  # over two lifetimes: expired twice over without its Updates
    for device_id in devices:
        now = await n.registration(device_id)
        assert now.status == 200, now
        assert now.body["registration_id"] == before[device_id]["registration_id"], (
            device_id == short.device_id,
            before[device_id],
            now.body,
        )
        assert now.body["lifetime_s"] == 3
        assert now.body["updated_at"] > before[device_id]["updated_at"]
