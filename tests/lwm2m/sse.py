"""A small Server-Sent Events reader for the tests (aiohttp, real HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tests.lwm2m.conftest import WAIT_S


class SseStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self) -> dict[str, Any]:
        """The next event: {"id", "event", "data" (decoded JSON)}; bounded by WAIT_S."""
        frame: dict[str, Any] = {}
        async with asyncio.timeout(WAIT_S):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise ConnectionError("the event stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if frame:
                        return frame
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(": ")
                frame[name] = json.loads(value) if name == "data" else value

    async def until(self, kind: str) -> dict[str, Any]:
        """Events up to (and including) the first of ``kind``."""
        while True:
            ev = await self.next()
            if ev["event"] == kind:
                return ev


@asynccontextmanager
async def sse(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    params: dict[str, str] | None = None,
    last_event_id: str | None = None,
) -> AsyncIterator[SseStream]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with session.get(url, headers=headers, params=params) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/event-stream"
        yield SseStream(resp)
