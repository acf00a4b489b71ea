"""Queue mode: the pure decisions, and end to end over two nodes (the device's session on
node A, the operator on node B's admin API): requests for a sleeping ``b=UQ`` device are
queued in Redis (bounded, with deadlines) and sent when it next Updates, results fetched
and followed as events; the CLI."""

from __future__ import annotations

from typing import Any

import pytest

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.queue import QueuedRequest, QueuePolicy, Status, goes_to_queue
from tests.lwm2m.conftest import provision, until
from tests.lwm2m.sse import sse
from tests.lwm2m.test_routing_cli import cli


def test_deadlines() -> None:
    policy = QueuePolicy(default_deadline_s=60, max_deadline_s=600)
    assert policy.deadline(None, 1000.0) == 1060.0
    assert policy.deadline(600, 1000.0) == 1600.0
    assert policy.deadline(0.5, 1000.0) == 1000.5
    for bad in (0, -1, 601, True, "10", float("nan")):
        with pytest.raises(InvalidArgument):
            policy.deadline(bad, 1000.0)


def test_what_goes_to_the_queue() -> None:
    assert goes_to_queue(queue_mode=True, reachable=True, awake=False)
    assert goes_to_queue(queue_mode=True, reachable=False, awake=True)  # the session ended
    assert not goes_to_queue(queue_mode=True, reachable=True, awake=True)
    assert not goes_to_queue(queue_mode=False, reachable=True, awake=False)
    assert not goes_to_queue(queue_mode=False, reachable=False, awake=False)


def test_queued_request_record() -> None:
    req = ops.read("/3/0/0", accept=None)
    item = QueuedRequest("rq_" + "0" * 24, "acme", "dev", "read", req, 100.0, 160.0)
    assert QueuedRequest.from_json(item.to_json()) == item
    assert item.due(159.9) and not item.due(160.0)
    assert item.view(150.0)["status"] == "queued"
    assert item.view(160.0)["status"] == "expired"  # before any sweep
    assert item.ttl_s(100.0) == 60 + 3600
    done = item.finished(Status.DONE, 120.0, result={"code": "2.05"})
    assert done.view(500.0)["status"] == "done" and done.view(500.0)["result"] == {"code": "2.05"}
    assert Status.DONE.final and not Status.SENT.final
    with pytest.raises(InvalidArgument):
        QueuedRequest.from_json({**item.to_json(), "status": "nope"})


@pytest.mark.integration
async def test_requests_for_a_sleeping_device_wait_for_its_update(
    lwm2m_node: Any, redis: Any, redis_url: str
) -> None:
    settings = {"observe_paths": [], "queue_awake_s": 0.3, "queue_max_per_device": 3}
    a = await lwm2m_node(**settings)
    b = await lwm2m_node(**settings)
    p = await provision(a.registry, a.certs, "psk")
    dev = a.device(p, binding="UQ")
    await dev.connect()
    d = p.device_id
    reg = (await b.registration(d)).body
    assert reg["queue_mode"] is True and reg["node_id"] == a.node.config.node_id
    awake_key = f"{{corem}}:lwm2m:awake:{d}"

    async def asleep() -> bool:
        return not await redis.exists(awake_key)

    events_url = (b.api.admin_base or b.api.base) + "/api/v1/lwm2m/events"
    async with sse(b.api.session, events_url, b.api.tokens["acme"], params={"device_id": d}) as ev:
        # Awake right after its Register: sent at once (routed to node A), as without queue mode.
        assert await redis.exists(awake_key)
        r = await b.op(d, "read", path="/3/0/0")
        assert r.status == 200 and r.body["records"][0]["value"] == "CORE-M", r.body

        await until(asleep)
        seen = len(dev.requests)
        first = await b.op(d, "read", path="/3/0/0")
        assert first.status == 202, first.body
        assert first.body["status"] == "queued" and first.body["waiting"] == 1
        missing = await b.op(d, "read", path="/3/0/99")
        short = await b.op(d, "read", path="/3303/0/5700", deadline_s=0.2)
        assert (missing.status, short.status) == (202, 202)
        full = await b.op(d, "read", path="/3/0/1")
        assert full.status == 429 and "3 requests waiting" in full.body["error"]["message"]
        assert len(dev.requests) == seen  # nothing reached the sleeping device

        # The short deadline passes: expired (swept by a node), reported, room again.
        expired = await ev.until("request_failed")
        assert expired["data"]["data"]["request_id"] == short.body["request_id"]
        assert expired["data"]["data"]["status"] == "expired"
        got = await b.api.request(
            "GET", f"/api/v1/lwm2m/requests/{short.body['request_id']}", tenant="acme"
        )
        assert got.status == 200 and got.body["status"] == "expired"
        write = await b.op(d, "write", path="/1/0/2", values=[{"path": "/1/0/2", "value": 5}],
                           replace=False)  # fmt: skip
        assert write.status == 202
        pending = await b.api.request(
            "GET", f"/api/v1/lwm2m/requests/{first.body['request_id']}", tenant="acme"
        )
        assert pending.body["status"] == "queued" and "result" not in pending.body

        # It wakes up (Update): the queued requests go out in order, results and events.
        assert (await dev.update()).code.is_successful()
        awake = await ev.until("awake")
        assert awake["data"]["data"]["queued"] == 3
        finished = [await ev.next() for _ in range(3)]
        assert [(e["event"], e["data"]["data"]["request_id"]) for e in finished] == [
            ("request_done", first.body["request_id"]),
            ("request_failed", missing.body["request_id"]),
            ("request_done", write.body["request_id"]),
        ]
        assert finished[0]["data"]["data"]["result"]["records"][0]["value"] == "CORE-M"
        assert finished[1]["data"]["data"]["error"]["code"] == "NOT_FOUND"
        assert [q for q in dev.requests[seen:]] == [
            ("GET", "/3/0/0", None),
            ("GET", "/3/0/99", None),
            ("POST", "/1/0/2", None),
        ]
        assert dev.client.values[next(k for k in dev.client.values if str(k) == "/1/0/2")] == 5
        done = await b.api.request(
            "GET", f"/api/v1/lwm2m/requests/{first.body['request_id']}", tenant="acme"
        )
        assert done.body["status"] == "done" and done.body["result"]["code"] == "2.05"

        # Its session ends without a De-register: queued even while "awake", sent after it
        # comes back over a new session with an Update.
        assert dev.channel is not None
        dev.channel.close()

        async def unreachable() -> bool:
            return (await b.registration(d)).body["reachable"] is False

        await until(unreachable)
        later = await b.op(d, "read", path="/3/0/2")
        assert later.status == 202, later.body
        await dev.open_session()
        assert (await dev.update()).code.is_successful()
        back = await ev.until("request_done")
        assert back["data"]["data"]["request_id"] == later.body["request_id"]

    # Tenant-scoped; malformed ids are 404 too.
    rid = first.body["request_id"]
    assert (
        await b.api.request("GET", f"/api/v1/lwm2m/requests/{rid}", tenant="globex")
    ).status == 404
    assert (await b.api.request("GET", "/api/v1/lwm2m/requests/rq_x", tenant="acme")).status == 404
    assert (await b.op(d, "read", path="/3/0/0", deadline_s=0)).status == 400

    # The CLI: the result of a queued request; a queued operation.
    code, out, err = await cli(redis_url, "request", "--tenant", "acme", "--id", rid)
    assert code == 0, err
    assert out["status"] == "done" and out["result"]["records"][0]["value"] == "CORE-M"
    code, out, err = await cli(redis_url, "request", "--tenant", "globex", "--id", rid)
    assert code != 0 and out is None and err.strip()
    await until(asleep)
    code, out, err = await cli(redis_url, "read", "--tenant", "acme", "--device", d,
                               "--path", "/3/0/0", "--deadline", "30")  # fmt: skip
    assert code == 0, err
    assert out["status"] == "queued" and out["deadline"] > out["queued_at"] + 29
