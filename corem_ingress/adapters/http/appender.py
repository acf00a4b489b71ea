"""Uplink appends for the HTTP adapter: concurrent requests share Redis round trips.

The write is the store's (XADD of ``Uplink.to_fields()`` to the tenant's stream); the
batching is the MQTT adapter's ``UplinkBatcher`` (one pre-packed EVAL per stream per
batch), used as is and touched only here, so that moving it into ``store/`` changes this
module alone. It cut the broker's CPU per HTTP uplink by about a third
(docs/benchmarks.md). A request gets 202 only once Redis has taken its entry; a failed
batch fails every request in it (503: the device retries; at least once, never lost).
"""

from __future__ import annotations

import asyncio
import time

from corem_ingress import metrics
from corem_ingress.adapters import Services
from corem_ingress.adapters.mqtt.uplinks import UplinkBatcher
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink

TRANSPORT = "http"


class Appender:
    def __init__(self, services: Services) -> None:
        self._batcher = UplinkBatcher(services.redis, services.keys)

    async def append(self, uplink: Uplink) -> None:
        """Return once the entry is stored; raise Unavailable if it may not be."""
        done: asyncio.Future[Unavailable | None] = asyncio.get_running_loop().create_future()

        def finished(error: Unavailable | None) -> None:
            if not done.done():
                done.set_result(error)

        started = time.perf_counter()
        self._batcher.submit(uplink, finished)
        error = await done
        if error is not None:
            metrics.uplink_failed(TRANSPORT)
            raise error
        metrics.uplink_appended(TRANSPORT, time.perf_counter() - started)

    async def drain(self, within: float) -> None:
        await self._batcher.drain(within)
