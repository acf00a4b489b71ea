"""Sessions kept for resumption in Redis (``store/dtls_sessions.py``): sealed under a key of
a rotated set the nodes share, bound to their session id, keys pruned once no session
sealed under them can live."""

from __future__ import annotations

import json
import os
from typing import Any

from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.store.dtls_sessions import DtlsSessionStore
from corem_ingress.store.keys import KeySchema

SESSION = StoredSession(
    suite=0xC0A8,
    master=b"m" * 48,
    extended_master_secret=True,
    kind="x509",
    lookup="ab" * 32,
    chain=("cd" * 32,),
    not_after=2e9,
    certificate=b"0\x82\x01\x00 a DER certificate",
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_sessions_are_sealed_shared_rotated_and_bound_to_their_id(redis: Any) -> None:
    keys = KeySchema("resume-" + os.urandom(4).hex())
    clock = Clock(1_000_000.0)
    node1 = DtlsSessionStore(redis, keys, lifetime_s=600, rotation_s=100, clock=clock)
    node2 = DtlsSessionStore(redis, keys, lifetime_s=600, rotation_s=100, clock=clock)
    sid = os.urandom(32)
    await node1.save(sid, SESSION)
    assert await node2.load(sid) == SESSION  # another node reads it
    raw = json.loads(await redis.get(keys.dtls_session(sid.hex())))
    assert raw["kid"] == "10000" and SESSION.master.hex() not in json.dumps(raw)
    assert SESSION.lookup not in json.dumps(raw)  # the credential reference is sealed too
    assert 0 < await redis.ttl(keys.dtls_session(sid.hex())) <= 600
    # Moved under another id, or tampered with: not a session.
    other = os.urandom(32)
    await redis.set(keys.dtls_session(other.hex()), json.dumps(raw))
    assert await node2.load(other) is None
    raw["sealed"] = raw["sealed"][:-2] + ("00" if raw["sealed"][-2:] != "00" else "01")
    await redis.set(keys.dtls_session(sid.hex()), json.dumps(raw))
    assert await node2.load(sid) is None
    # A new period: a new key, set by the first node that stores; the old one stays while
    # sessions sealed under it can live, then goes.
    await node1.save(sid, SESSION)
    clock.now += 100
    await node2.save(os.urandom(32), SESSION)
    assert await _kids(redis, keys) == {"10000", "10001"}
    assert await node1.load(sid) == SESSION
    clock.now += 700  # period 10000 ended 700 s ago, more than the 600 s lifetime
    await node1.save(os.urandom(32), SESSION)
    assert await _kids(redis, keys) == {"10001", "10008"}
    assert await node2.load(sid) is None  # nor from a node's cache (expired anyway)
    await node2.delete(sid)
    assert not await redis.exists(keys.dtls_session(sid.hex()))


async def _kids(redis: Any, keys: KeySchema) -> set[str]:
    return {
        k.decode() if isinstance(k, bytes) else k for k in await redis.hkeys(keys.dtls_session_keys)
    }
