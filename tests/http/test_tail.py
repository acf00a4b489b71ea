"""`corem-ingress tail`: the operator's view of uplinks arriving (a real CLI process)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from .conftest import Api


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
    env["COREM_REDIS_URL"] = redis_url
    return env


async def run_cli(*args: str, redis_url: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        *args,
        env=cli_env(redis_url),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_tail_from_start_filters_by_device(api: Api, redis_url: str, tmp_path: Path) -> None:
    a = await api.provision("acme", "hw-a")
    b = await api.provision("acme", "hw-b")
    sent = []
    for dev, n in [(a, 1), (b, 2), (a, 3)]:
        reply = await api.uplink(
            dev["device_id"], dev["api_key"], body={"kind": "event", "payload": n}
        )
        sent.append(reply.body["message_id"])
    proc = await run_cli(
        "tail",
        "--tenant",
        "acme",
        "--device",
        a["device_id"],
        "--from-start",
        "--count",
        "2",
        redis_url=redis_url,
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [x["message_id"] for x in lines] == [sent[0], sent[2]]
    assert [x["payload"] for x in lines] == [1, 3]
    assert {x["device_id"] for x in lines} == {a["device_id"]}
    assert all(x["transport"] == "http" and x["stream_id"] for x in lines)


async def test_tail_follows_new_uplinks_only(api: Api, redis_url: str, tmp_path: Path) -> None:
    dev = await api.provision("acme", "hw-a")
    old = await api.uplink(dev["device_id"], dev["api_key"])
    proc = await run_cli(
        "tail", "--tenant", "acme", "--count", "1", redis_url=redis_url, cwd=tmp_path
    )
    new_ids: list[str] = []
    # Keep sending (bounded) until the tail process has seen one and exited.
    for i in range(300):
        reply = await api.uplink(
            dev["device_id"], dev["api_key"], body={"kind": "state", "payload": i}
        )
        new_ids.append(reply.body["message_id"])
        try:
            await asyncio.wait_for(proc.wait(), timeout=0.1)
            break
        except TimeoutError:
            continue
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    (line,) = [json.loads(x) for x in out.decode().splitlines()]
    assert line["message_id"] != old.body["message_id"]
    assert line["message_id"] in new_ids


async def test_tail_bad_input_is_one_line_and_exit_2(redis_url: str, tmp_path: Path) -> Any:
    for args in (["--tenant", "Not A Tenant"], ["--tenant", "acme", "--device", "x"], []):
        proc = await run_cli("tail", *args, redis_url=redis_url, cwd=tmp_path)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 2, (args, err)
        assert out == b""
        assert len(err.decode().strip().splitlines()) == 1
