"""Only the CoAP POST helper is left here: ``tests/ops/test_node_failover_dtls.py`` imports
it. The Redis-killed-under-load scenario that lived here is the behaviour suite's, for
every transport (``tests/behaviour/redis_killed.py``); move this helper once that import
moves."""

from __future__ import annotations

import asyncio
import os

from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress.sim.dtls_client import AsyncDtlsClient

_mids = iter(range(1, 60_000))


async def post(client: AsyncDtlsClient, payload: bytes, timeout: float) -> Code | None:
    """One confirmable POST /up/telemetry; the response code, or None without an answer."""
    m = Message(code=Code.POST, payload=payload)
    m.mtype, m.mid, m.token = CON, next(_mids), os.urandom(4)
    m.opt.uri_path = ("up", "telemetry")
    client.send(m.encode())
    try:
        async with asyncio.timeout(timeout):
            while True:
                resp = Message.decode(await client.recv(timeout=timeout))
                if resp.token == m.token:
                    return resp.code
    except (TimeoutError, ConnectionError):
        return None
