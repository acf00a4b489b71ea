"""Broker CPU of storing the DTLS sessions that full handshakes issue (issue 18).

    .venv/bin/python -m bench.dtls_session_store [--rounds 300]

The broker's ``DtlsSessionStore`` against a private redis-server, in process: one
``save`` per session (one SET, what the listener did per handshake before) against
``queue`` + ``flush`` of batches of 1, 4 and 16 sessions (one pipeline per batch: what
the background writer does with the sessions of a ~20 ms window). Measured: this
process's CPU (``process_time``: the redis-server is another process), sealing included,
per batch and per session; the fastest of 3 interleaved passes counts (the machine is
shared: other load only adds time). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from corem_ingress.app import redis_client
from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.store.dtls_sessions import DtlsSessionStore
from corem_ingress.store.keys import KeySchema

SESSION = StoredSession(
    suite=0xC0A8,
    master=b"m" * 48,
    extended_master_secret=True,
    kind="psk",
    lookup="bench:device",
    chain=(),
    secret_digest=b"d" * 32,
    not_after=0.0,
    certificate=b"",
)
BATCHES = (1, 4, 16)


async def one_pass(store: DtlsSessionStore, rounds: int) -> dict[str, float]:
    """µs of CPU per session: ``save`` each, and batches of each size."""
    out: dict[str, float] = {}
    t = time.process_time()
    for _ in range(rounds):
        await store.save(os.urandom(32), SESSION)
    out["save"] = (time.process_time() - t) / rounds * 1e6
    for k in BATCHES:
        t = time.process_time()
        for _ in range(rounds):
            for _ in range(k):
                store.queue(os.urandom(32), SESSION)
            await store.flush()
        out[f"batch_{k}"] = (time.process_time() - t) / rounds / k * 1e6
    return out


async def run(url: str, rounds: int) -> dict[str, float]:
    r = redis_client(url)
    store = DtlsSessionStore(
        r, KeySchema("bench"), lifetime_s=600, rotation_s=3600, clock=time.time
    )
    await store.save(os.urandom(32), SESSION)  # the period's key: set and cached
    passes = [await one_pass(store, rounds) for _ in range(3)]
    await r.aclose()
    return {k: min(p[k] for p in passes) for k in passes[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()
    redis = EmbeddedRedis().start()
    try:
        best = asyncio.run(run(redis.url, a.rounds))
    finally:
        redis.close()
    print("how                        CPU per session (µs)")
    print(f"{'save (one SET each)':26s} {best['save']:8.0f}")
    for k in BATCHES:
        print(f"{f'queue + flush, {k} a batch':26s} {best[f'batch_{k}']:8.0f}")
    print(json.dumps({"us_per_session": best, "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
