"""Batched uplink appends: many devices' accepted messages, one Redis round trip per batch.

Shared by the MQTT and HTTP adapters (CoAP and LwM2M append one by one through
``UplinkStore``).

The same write as ``UplinkStore.append`` (XADD of ``Uplink.to_fields()`` to the tenant's
stream), issued as one EVAL per stream per batch, so a busy listener pays one round trip
and one await for many messages. A failed EVAL may have stored some of its entries: they
are all reported failed (no PUBACK), so the client re-sends: at least once, never lost.
Each item's callback runs after its batch: with ``None`` once Redis has taken it (then,
and only then, the PUBACK goes out), or with an :class:`Unavailable` error. Items are
appended in submission order, so a connection's PUBACKs keep the order of its PUBLISHes.
Every batch is bounded by ``timeout_s`` (the node's ``redis.socket_timeout_s``).

On a Redis Cluster each tenant's stream has its own lane (a queue and at most one EVAL in
flight), sent through the request path's slot router (``store/slot_router.py``): a master
that is down or failing over holds up only the streams in its slots, never another
tenant's lane.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import JsonValue, Uplink
from corem_ingress.store.connection import ClientCommands, KeyedCommands, is_cluster
from corem_ingress.store.keys import KeySchema

log = structlog.get_logger("corem.uplinks")

Done = Callable[[Unavailable | None], None]


class UplinkBatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        max_batch: int = 512,
        on_batch_done: Callable[[], None] | None = None,
        keyed: KeyedCommands | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._r = redis
        self._keys = keys
        self._max_batch = max_batch
        self._queue: deque[tuple[Uplink, Done]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._on_batch_done = on_batch_done
        self._conn: Any = None
        #: The kept connection's own socket timeout, restored when it goes back to the pool.
        self._socket_timeout: float | None = None
        self._timeout_s = timeout_s
        #: On a cluster: one lane per stream, each EVAL routed to its slot's master.
        self._cluster = is_cluster(redis) or keyed is not None
        self._keyed: KeyedCommands = keyed or ClientCommands(redis)
        self._lanes: dict[str, deque[tuple[Uplink, Done]]] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self.batches = 0

    def __len__(self) -> int:
        return len(self._queue) + sum(len(lane) for lane in self._lanes.values())

    def submit(self, uplink: Uplink, done: Done) -> None:
        if self._cluster:
            key = self._keys.uplink_stream(uplink.tenant_id)
            self._lanes.setdefault(key, deque()).append((uplink, done))
            if key not in self._lane_tasks:
                self._lane_tasks[key] = asyncio.get_running_loop().create_task(self._lane(key))
            return
        self._queue.append((uplink, done))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self, within: float) -> None:
        """Wait (bounded) until everything submitted has been written or has failed."""
        tasks = [t for t in (self._task, *self._lane_tasks.values()) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    async def _lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                batch = [lane.popleft() for _ in range(min(len(lane), self._max_batch))]
                error: Exception | None = None
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await self._keyed.execute(
                            key, "EVAL", _APPEND_SCRIPT, 1, key, *append_args([u for u, _ in batch])
                        )
                except TimeoutError:
                    error = redis.exceptions.TimeoutError(f"no answer within {self._timeout_s}s")
                except (redis.exceptions.RedisError, OSError) as exc:
                    error = exc
                if error is not None:
                    log.warning("uplinks.batch_failed", size=len(batch), error=str(error))
                self._finish(batch, [error] * len(batch))
                self.batches += 1
                if self._on_batch_done is not None:
                    self._on_batch_done()
        finally:
            del self._lane_tasks[key]
            if not lane:
                del self._lanes[key]

    async def _run(self) -> None:
        try:
            while self._queue:
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
                await self._write(batch)
                self.batches += 1
                if self._on_batch_done is not None:
                    self._on_batch_done()
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[Uplink, Done]]) -> None:
        groups: dict[str, list[int]] = {}
        for i, (uplink, _done) in enumerate(batch):
            groups.setdefault(self._keys.uplink_stream(uplink.tenant_id), []).append(i)
        errors: list[Exception | None] = [None] * len(batch)
        replies: list[object]
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._execute(
                    b"".join(
                        pack_append(key, [batch[i][0] for i in idx]) for key, idx in groups.items()
                    ),
                    len(groups),
                )
        except TimeoutError:
            exc: Exception = redis.exceptions.TimeoutError(f"no answer within {self._timeout_s}s")
            log.warning("uplinks.batch_failed", size=len(batch), error=str(exc))
            replies = [exc] * len(groups)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("uplinks.batch_failed", size=len(batch), error=str(exc))
            replies = [exc] * len(groups)
        for idx, reply in zip(groups.values(), replies, strict=True):
            if isinstance(reply, Exception):
                for i in idx:
                    errors[i] = reply
        self._finish(batch, errors)

    @staticmethod
    def _finish(batch: list[tuple[Uplink, Done]], errors: list[Exception | None]) -> None:
        for (_uplink, done), err in zip(batch, errors, strict=True):
            error = None
            if err is not None:
                error = Unavailable("uplink storage is unavailable", reason=str(err))
            try:
                done(error)
            except Exception:
                log.exception("uplinks.callback_failed")

    async def _execute(self, packed: bytes, count: int) -> list[object]:
        """Send pre-packed commands on the batcher's own connection; one reply (or error) each.

        The connection is taken from the client's pool once and kept (batches are
        sequential); after an error it is disconnected and handed back. While kept, its
        own socket timeout is off: ``_write`` bounds the whole batch (``timeout_s``), and
        redis-py's per-call timeouts (a task for ``wait_for`` around the send, a timeout
        context per reply) were a tenth of the broker's CPU per QoS 1 window.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._r.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            self._socket_timeout = conn.socket_timeout
            conn.socket_timeout = None
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies: list[object] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except redis.exceptions.ResponseError as exc:  # reply consumed: still in sync
                    replies.append(exc)
            return replies
        except BaseException:
            self._conn = None
            await conn.disconnect()
            await self._release(conn)
            raise

    async def _release(self, conn: Any) -> None:
        conn.socket_timeout = self._socket_timeout
        await self._r.connection_pool.release(conn)

    async def close(self) -> None:
        """Hand the kept connection back to the pool."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._release(conn)


# One EVAL per stream: XADD each entry (ARGV: field count, then field/value pairs).
_APPEND_SCRIPT = (
    b"local j = 1 for _ = 1, tonumber(ARGV[1]) do j = j + 1 "
    b"local n = tonumber(ARGV[j]) "
    b"redis.call('XADD', KEYS[1], '*', unpack(ARGV, j + 1, j + n)) j = j + n end "
    b"return tonumber(ARGV[1])"
)


def pack_append(key: str, uplinks: list[Uplink]) -> bytes:
    """RESP for one EVAL that appends ``uplinks`` (``Uplink.to_fields()``) to stream ``key``.

    Packed here rather than by redis-py: its per-argument encoding was most of the
    broker's CPU per message (see docs/benchmarks.md).
    """
    head = [b"EVAL", _APPEND_SCRIPT, b"1", key.encode(), b"%d" % len(uplinks)]
    parts = [_bulk(a) for a in head]
    count = 5
    # The messages of one read share their time (adapters/mqtt/protocol.py): its text
    # once per run of equal times (float repr is ~0.5 us).
    last_time: float | None = None
    received = b""
    for u in uplinks:
        if u.properties is not None:
            # Rare (MQTT 5 properties): the generic layout, one more field.
            fields = u.to_fields()
            parts.append(_bulk(b"%d" % (2 * len(fields))))
            parts += [_bulk(x.encode()) for kv in fields.items() for x in kv]
            count += 1 + 2 * len(fields)
            continue
        # Uplink.to_fields(), inlined (a test holds them equal): the JSON encoder is built
        # once, not per message as json.dumps(separators=...) does; the four fields that are
        # the same for every message of a device and kind are packed once (_middle).
        mid = u.message_id.encode()
        payload = _json_text(u.payload).encode()
        encoding = u.payload_encoding.encode()
        if u.received_at != last_time:
            last_time = u.received_at
            received = repr(last_time).encode()
        parts += (
            _HEAD % (len(mid), mid),
            _middle(u.tenant_id, u.device_id, u.transport, u.kind),
            _TAIL % (len(payload), payload, len(encoding), encoding, len(received), received),
        )
        count += 1 + 2 * len(_FIELDS)
    return b"*%d\r\n%s" % (count, b"".join(parts))


def append_args(uplinks: list[Uplink]) -> list[str]:
    """The EVAL arguments ``pack_append`` packs, for clients that pack themselves (cluster)."""
    args = [str(len(uplinks))]
    for u in uplinks:
        fields = u.to_fields()
        args.append(str(2 * len(fields)))
        for name, value in fields.items():
            args += [name, value]
    return args


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


_JSON = json.JSONEncoder(separators=(",", ":"))
#: ``_JSON.encode`` without building its C encoder per call (``JSONEncoder.iterencode``
#: does): the same encoder and arguments, made once. No circular-reference markers: a
#: payload is a parsed JSON value, which has no cycles.
_C_ENCODER = (
    c_make_encoder(None, _JSON.default, encode_basestring_ascii, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)


def _json_text(value: JsonValue) -> str:
    """``json.dumps(value, separators=(",", ":"))``: the stream's payload text."""
    if _C_ENCODER is None:
        return _JSON.encode(value)
    return "".join(_C_ENCODER(value, 0))


_FIELDS = (
    "message_id",
    "tenant_id",
    "device_id",
    "transport",
    "kind",
    "payload",
    "payload_encoding",
    "received_at",
)


def _slots(names: tuple[str, ...]) -> bytes:
    """Each name followed by a value slot (``%d`` length, ``%s`` bytes)."""
    return b"".join(_bulk(name.encode()).replace(b"%", b"%%") + b"$%d\r\n%s\r\n" for name in names)


#: Field count, then each name followed by a value slot: the message id, the four fields
#: a device's messages share (``_middle``), then payload, encoding and time.
_HEAD = _bulk(b"%d" % (2 * len(_FIELDS))).replace(b"%", b"%%") + _slots(_FIELDS[:1])
_MIDDLE = _slots(_FIELDS[1:5])
_TAIL = _slots(_FIELDS[5:])
_MIDDLES: dict[tuple[str, str, str, str], bytes] = {}
_MIDDLES_KEPT = 4096


def _middle(tenant_id: str, device_id: str, transport: str, kind: str) -> bytes:
    """tenant_id, device_id, transport and kind packed; kept for the devices seen lately."""
    key = (tenant_id, device_id, transport, kind)
    packed = _MIDDLES.get(key)
    if packed is None:
        if len(_MIDDLES) >= _MIDDLES_KEPT:
            _MIDDLES.clear()
        v = [x.encode() for x in key]
        packed = _MIDDLES[key] = _MIDDLE % (
            len(v[0]), v[0], len(v[1]), v[1], len(v[2]), v[2], len(v[3]), v[3],
        )  # fmt: skip
    return packed
