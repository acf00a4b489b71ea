"""Firmware update (object 5): the pure state machine, campaign counts and blocks; end to
end over two nodes (devices on node A, the operator on node B) with the simulator's client:
pull (Block2 from /fw/<token> on the DTLS port, only to the job's own device) and push
(Block1 writes of /5/0/0), state and result observed, the campaign view, the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.firmware import (
    Action,
    FirmwareJob,
    JobStatus,
    Method,
    block_of,
    campaign_counts,
    check_image,
    on_device_report,
    pull_uri,
    serving_szx,
    szx_of,
)
from corem_ingress.lwm2m.model import Lwm2mPath
from tests.lwm2m.conftest import provision, until
from tests.lwm2m.sse import sse
from tests.lwm2m.test_routing_cli import cli

_URI = Lwm2mPath.of(5, 0, 1)


def _job(status: JobStatus = JobStatus.PENDING) -> FirmwareJob:
    return FirmwareJob("fj", "fc", "acme", "dev", "fw", Method.PULL, status, 0.0, token="t")


def test_state_machine_of_a_successful_update() -> None:
    job = _job()
    job, act = on_device_report(job, state=1, result=0, now=1.0)
    assert (job.status, act) == (JobStatus.DOWNLOADING, None)
    job, act = on_device_report(job, state=2, result=None, now=2.0)
    assert (job.status, act) == (JobStatus.DOWNLOADED, Action.EXECUTE_UPDATE)
    _, act = on_device_report(job, state=2, result=None, now=2.5)
    assert act is None  # Execute once only
    job, act = on_device_report(job, state=3, result=None, now=3.0)
    assert (job.status, act) == (JobStatus.UPDATING, None)
    job, _ = on_device_report(job, state=0, result=None, now=4.0)
    assert job.status is JobStatus.UPDATING  # Idle again, the result decides
    job, _ = on_device_report(job, state=None, result=1, now=5.0)
    assert job.status is JobStatus.SUCCEEDED and job.device_state == 0 and job.device_result == 1
    final, act = on_device_report(job, state=1, result=8, now=6.0)
    assert final.status is JobStatus.SUCCEEDED and act is None  # the outcome stands
    assert (final.device_state, final.device_result) == (1, 8)  # the values are shown


def test_failures_and_the_push_path() -> None:
    failed, _ = on_device_report(_job(JobStatus.DOWNLOADING), state=0, result=5, now=1.0)
    assert failed.status is JobStatus.FAILED and "integrity" in (failed.error or "")
    # Push: the device goes straight from Idle to Downloaded.
    job, act = on_device_report(_job(), state=2, result=0, now=1.0)
    assert (job.status, act) == (JobStatus.DOWNLOADED, Action.EXECUTE_UPDATE)
    # A stale "success" from an earlier update does not finish a new job.
    job, _ = on_device_report(_job(), state=0, result=1, now=1.0)
    assert job.status is JobStatus.PENDING
    assert FirmwareJob.from_json(failed.to_json()) == failed
    assert "token" not in failed.view() and "tenant_id" not in failed.view()


def test_campaign_counts_and_blocks() -> None:
    jobs = [_job(JobStatus.SUCCEEDED), _job(JobStatus.FAILED), _job(JobStatus.SUCCEEDED)]
    counts = campaign_counts(jobs)
    assert counts == {
        "pending": 0,
        "downloading": 0,
        "downloaded": 0,
        "updating": 0,
        "succeeded": 2,
        "failed": 1,
    }
    assert [szx_of(n) for n in (16, 512, 1024)] == [0, 5, 6]
    with pytest.raises(InvalidArgument):
        szx_of(100)
    assert block_of(1000, 0, 5) == (0, 512, True)
    assert block_of(1000, 1, 5) == (512, 1000, False)
    assert block_of(1024, 1, 5) == (512, 1024, False)
    with pytest.raises(InvalidArgument):
        block_of(1024, 2, 5)
    assert serving_szx(6, 4) == 4 and serving_szx(2, 4) == 2 and serving_szx(None, 4) == 4
    assert pull_uri("::1", 5684, "abc") == "coaps://[::1]:5684/fw/abc"
    with pytest.raises(InvalidArgument):
        check_image(b"", 10)
    with pytest.raises(InvalidArgument):
        check_image(b"x" * 11, 10)


async def _upload(n: Any, data: bytes, **query: str) -> Any:
    q = "&".join(f"{k}={v}" for k, v in ({"name": "fw", "version": "2.0"} | query).items())
    return await n.api.request(
        "POST",
        f"/api/v1/lwm2m/firmware?{q}",
        tenant="acme",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )


@pytest.mark.integration
async def test_pull_and_push_updates_over_two_nodes(
    lwm2m_node: Any, redis_url: str, tmp_path: Path
) -> None:
    settings = {"observe_paths": [], "firmware_block_size": 256, "firmware_max_bytes": 100_000}
    a = await lwm2m_node(**settings)
    b = await lwm2m_node(**settings)
    puller_p, pusher_p, plain_p = [await provision(a.registry, a.certs, "psk") for _ in range(3)]
    puller = a.device(puller_p, firmware_update=True, pull_block_size=1024)
    pusher = a.device(pusher_p, firmware_update=True, firmware_result=8)
    plain = a.device(plain_p)
    for dev in (puller, pusher, plain):
        await dev.connect()
    image = os.urandom(70_000)  # over http.max_body_bytes (64 KiB): its own limit applies

    up = await _upload(b, image)
    assert up.status == 201, up.body
    image_id = up.body["image_id"]
    assert up.body["size"] == len(image) and up.body["version"] == "2.0"
    listed = await b.api.request("GET", "/api/v1/lwm2m/firmware", tenant="acme")
    assert [i["image_id"] for i in listed.body["images"]] == [image_id]
    assert (await _upload(b, b"x" * 100_001)).status == 413
    assert (await _upload(b, b"")).status == 400
    assert (await _upload(b, b"x", name="bad name")).status == 400
    assert (await b.api.request("GET", "/api/v1/lwm2m/firmware", tenant="globex")).body == {
        "images": []
    }

    events_url = (b.api.admin_base or b.api.base) + "/api/v1/lwm2m/events"
    async with sse(
        b.api.session, events_url, b.api.tokens["acme"], params={"device_id": puller_p.device_id}
    ) as ev:
        r = await b.api.request(
            "POST",
            f"/api/v1/lwm2m/firmware/{image_id}/updates",
            tenant="acme",
            json={"device_ids": [puller_p.device_id, plain_p.device_id], "method": "pull"},
        )
        assert r.status == 201, r.body
        campaign = r.body["campaign_id"]
        jobs = {j["device_id"]: j for j in r.body["jobs"]}
        assert jobs[plain_p.device_id]["status"] == "failed"
        assert "object (5)" in jobs[plain_p.device_id]["error"]

        async def finished() -> bool:
            view = await b.api.request("GET", f"/api/v1/lwm2m/campaigns/{campaign}", tenant="acme")
            return bool(view.body["counts"]["succeeded"] + view.body["counts"]["failed"] == 2)

        await until(finished)
        statuses = []
        while not statuses or statuses[-1] not in ("succeeded", "failed"):
            statuses.append((await ev.until("firmware"))["data"]["data"]["job"]["status"])
        assert statuses == ["downloading", "downloaded", "updating", "succeeded"], (
            puller.pull_error
            or str(
                (
                    await b.api.request("GET", f"/api/v1/lwm2m/campaigns/{campaign}", tenant="acme")
                ).body
            )
        )
    view = await b.api.request("GET", f"/api/v1/lwm2m/campaigns/{campaign}", tenant="acme")
    assert view.body["counts"] == {
        "pending": 0,
        "downloading": 0,
        "downloaded": 0,
        "updating": 0,
        "succeeded": 1,
        "failed": 1,
    }
    done = next(j for j in view.body["jobs"] if j["device_id"] == puller_p.device_id)
    assert (done["device_state"], done["device_result"]) == (0, 1)
    assert puller.client.package == image
    # Served at the broker's block size (256), below the 1024 the device asked for.
    assert puller.pulled_blocks == math.ceil(len(image) / 256)
    assert puller.requests[-1] == ("POST", "/5/0/2", None)
    r = await b.op(puller_p.device_id, "read", path="/3/0/3")
    assert r.body["records"][0]["value"] == f"pkg-{len(image)}"

    # Push: Block1 writes of /5/0/0; this device's update fails (result 8).
    r = await b.api.request(
        "POST",
        f"/api/v1/lwm2m/firmware/{image_id}/updates",
        tenant="acme",
        json={"device_ids": [pusher_p.device_id], "method": "push"},
    )
    push_campaign = r.body["campaign_id"]

    async def push_done() -> bool:
        view = await b.api.request("GET", f"/api/v1/lwm2m/campaigns/{push_campaign}", tenant="acme")
        return bool(view.body["counts"]["failed"] == 1)

    await until(push_done)
    assert pusher.client.package == image
    assert pusher.pushed_blocks == math.ceil(len(image) / 256)
    code, out, err = await cli(
        redis_url, "firmware-campaign", "--tenant", "acme", "--id", push_campaign
    )
    assert code == 0, err
    assert out["counts"]["failed"] == 1
    assert out["jobs"][0]["error"] == "firmware update failed"
    # The CLI uploads and starts a campaign too.
    (tmp_path / "fw.bin").write_bytes(b"\x01" * 300)
    code, out, err = await cli(
        redis_url,
        "firmware-upload",
        "--tenant",
        "acme",
        "--file",
        str(tmp_path / "fw.bin"),
        "--name",
        "cli",
        "--version",
        "3",
    )
    assert code == 0 and out["size"] == 300, err
    code, started, err = await cli(
        redis_url,
        "firmware-update",
        "--tenant",
        "acme",
        "--image",
        out["image_id"],
        "--device",
        plain_p.device_id,
    )
    assert code == 0, err
    assert started["counts"]["failed"] == 1  # that device has no object 5
    code, _, err = await cli(
        redis_url,
        "firmware-upload",
        "--tenant",
        "acme",
        "--file",
        str(tmp_path / "none"),
        "--name",
        "x",
        "--version",
        "1",
    )
    assert code != 0 and "cannot read" in err

    # The pull URI answers only the job's own device, and only while the job runs: a pull
    # job the device does not act on (its fetch switched off) keeps its token alive.
    async def no_fetch(uri: str) -> None:
        return None

    pusher._pull = no_fetch  # type: ignore[method-assign]
    r = await b.api.request(
        "POST",
        f"/api/v1/lwm2m/firmware/{image_id}/updates",
        tenant="acme",
        json={"device_ids": [pusher_p.device_id], "method": "pull"},
    )
    held = r.body["jobs"][0]["job_id"]

    async def uri_written() -> bool:
        return bool(pusher.client.values.get(_URI))

    await until(uri_written)
    uri = str(pusher.client.values[_URI])
    assert uri.startswith(f"coaps://127.0.0.1:{a.port}/fw/")
    token = uri.rsplit("/", 1)[1]
    shown = await b.api.request(
        "GET", f"/api/v1/lwm2m/campaigns/{r.body['campaign_id']}", tenant="acme"
    )
    assert shown.body["jobs"][0]["job_id"] == held
    assert token not in json.dumps(shown.body)  # the device's download key is not shown
    own = await _get(pusher, ("fw", token))
    assert own.code == Code.CONTENT and own.payload == image[:256]
    assert own.opt.block2.more and own.opt.size2 == len(image)
    assert (await _get(plain, ("fw", token))).code == Code.FORBIDDEN  # another device
    assert (await _get(plain, ("fw", "no-such-token"))).code == Code.NOT_FOUND
    late = Message(code=Code.GET)
    late.opt.uri_path = ("fw", token)
    late.opt.block2 = (1000, False, 4)
    assert (await pusher.request_message(late)).code == Code.BAD_OPTION  # past the end

    # Another tenant sees nothing; bad requests are 400/404.
    assert (
        await b.api.request("GET", f"/api/v1/lwm2m/campaigns/{campaign}", tenant="globex")
    ).status == 404
    bad = await b.api.request(
        "POST",
        f"/api/v1/lwm2m/firmware/{image_id}/updates",
        tenant="acme",
        json={"device_ids": [puller_p.device_id], "method": "ftp"},
    )
    assert bad.status == 400
    other = await b.api.request(
        "POST",
        f"/api/v1/lwm2m/firmware/{image_id}/updates",
        tenant="globex",
        json={"device_ids": [puller_p.device_id]},
    )
    assert other.status == 404


async def _get(dev: Any, path: tuple[str, ...]) -> Message:
    msg = Message(code=Code.GET)
    msg.opt.uri_path = path
    return await dev.request_message(msg)
