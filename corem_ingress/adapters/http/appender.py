"""Uplink appends for the HTTP adapter: concurrent requests share Redis round trips.

The write is the store's (XADD of ``Uplink.to_fields()`` to the tenant's stream); the
batching is the MQTT adapter's ``UplinkBatcher`` (one pre-packed EVAL per stream per
batch), used as is and touched only here, so that moving it into ``store/`` changes this
module alone. It cut the broker's CPU per HTTP uplink by about a third
(docs/benchmarks.md). A request gets 202 only once Redis has taken its entry; a failed
batch fails every request in it (503: the device retries; at least once, never lost).

On a Redis Cluster client (``redis+cluster://``) the batcher cannot work (it writes on
one pooled connection; a cluster routes by slot), so each request appends through the
store (``UplinkStore.append``: one XADD routed to the stream's slot). And whatever
happens to a batch, a request waits at most ``append_wait_s`` for it, then gets 503.
"""

from __future__ import annotations

import asyncio
import time

from corem_ingress import metrics
from corem_ingress.adapters import Services
from corem_ingress.adapters.mqtt.uplinks import UplinkBatcher
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.connection import is_cluster

TRANSPORT = "http"


class Appender:
    def __init__(self, services: Services) -> None:
        self._store = services.uplinks
        self._batcher = (
            None if is_cluster(services.redis) else UplinkBatcher(services.redis, services.keys)
        )
        #: The longest a request waits for its batch (several Redis timeouts: batches queue).
        self.append_wait_s = max(5.0, 5 * services.config.redis.socket_timeout_s)

    async def append(self, uplink: Uplink) -> None:
        """Return once the entry is stored; raise Unavailable if it may not be."""
        if self._batcher is None:
            await self._store.append(uplink)  # Unavailable if Redis did not take it
            return
        done: asyncio.Future[Unavailable | None] = asyncio.get_running_loop().create_future()

        def finished(error: Unavailable | None) -> None:
            if not done.done():
                done.set_result(error)

        started = time.perf_counter()
        self._batcher.submit(uplink, finished)
        try:
            error = await asyncio.wait_for(done, timeout=self.append_wait_s)
        except TimeoutError:
            error = Unavailable("uplink storage did not answer", reason="append wait exceeded")
        if error is not None:
            metrics.uplink_failed(TRANSPORT)
            raise error
        metrics.uplink_appended(TRANSPORT, time.perf_counter() - started)

    async def drain(self, within: float) -> None:
        if self._batcher is not None:
            await self._batcher.drain(within)
