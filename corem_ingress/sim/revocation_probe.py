"""A listener-less broker node that holds stand-in sessions and reports disconnect orders.

Used by tests and bench/resolver.py to see a revocation reach another process:
it runs the real resolver, bus and session hub on the given Redis, registers one
session per ``--watch kind:credential_id:lookup``, prints ``{"ready": ...}`` once
subscribed, then one JSON line per disconnect order (with the time it was
received), and exits after ``--max-seconds``.

    python -m corem_ingress.sim.revocation_probe --redis-url redis://127.0.0.1:6379/0 \\
        --watch api_key:key_abc:<sha256> --max-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from corem_ingress.app import Node
from corem_ingress.config import Config
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.sessions import DisconnectOrder, LiveSession


def _emit(data: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def run(redis_url: str, watches: list[str], max_seconds: float, from_stdin: bool) -> None:
    cfg = Config()
    cfg.redis.url = redis_url
    cfg.health.port = 0
    cfg.logging.format = "json"
    cfg.validate()
    node = Node(cfg, listener_factories=[])
    await node.start()
    assert node.bus is not None and node.services is not None
    hub = node.services.sessions

    def on_order(order: DisconnectOrder) -> None:
        _emit(
            {
                "order": order.session_id,
                "credential_id": order.identity.credential_id,
                "reason": order.cause.label,
                "at": time.time(),
            }
        )

    hub.observers.append(on_order)

    def watch(spec: str) -> None:
        kind, credential_id, lookup = spec.split(":", 2)
        identity = DeviceIdentity("probe", "probe", CredentialKind(kind), credential_id)
        hub.register(
            LiveSession(f"probe-{credential_id}", "probe", identity, lookup), lambda _o: None
        )

    for spec in watches:
        watch(spec)
    await node.bus.subscribed.wait()
    _emit({"ready": True, "sessions": len(hub)})
    try:
        if from_stdin:  # more watches, one spec per line, acknowledged one by one
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_seconds
            while loop.time() < deadline:
                line = await asyncio.wait_for(
                    loop.run_in_executor(None, sys.stdin.readline), deadline - loop.time()
                )
                if not line:
                    break
                watch(line.strip())
                _emit({"watching": line.strip().split(":")[1]})
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        else:
            await asyncio.sleep(max_seconds)
    finally:
        await node.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--watch", action="append", default=[], help="kind:credential_id:lookup")
    p.add_argument("--stdin", action="store_true", help="read more watch specs from stdin")
    p.add_argument("--max-seconds", type=float, default=30.0)
    args = p.parse_args()
    from corem_ingress import logs

    logs.configure("json", "error")
    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        asyncio.run(run(args.redis_url, args.watch, args.max_seconds, args.stdin))


if __name__ == "__main__":
    main()
