"""Memory per idle DTLS session, with and without the OpenSSL object let go after the
handshake (``coap.detach_openssl``, issue 18).

    .venv/bin/python -m bench.dtls_idle_memory [--sessions 2000]

The broker's ``DtlsServer`` in process (sans-I/O) with the simulator's OpenSSL devices
(PSK CCM_8, no CID; a device is freed once its handshake is done). Each mode runs in a
fresh child process: its RSS (``/proc``: OpenSSL's native memory included, which
tracemalloc does not see) before and after N established sessions, per session. Prints a
table and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

from bench.procstat import rss_bytes

KEY = b"k" * 32


def child(sessions: int, detach: bool) -> dict[str, float]:
    from bench.dtls_cid import _Cache
    from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
    from corem_ingress.sim.dtls_client import Client, psk_context

    server = DtlsServer(
        cert_file=None,
        key_file=None,
        ca_files=[],
        credentials=_Cache(),
        config=DtlsConfig(handshake_rate=0.0, max_sessions=10 * sessions, detach_openssl=detach),
    )
    ctx = psk_context(b"dev-1", KEY)

    def handshake(port: int) -> None:
        client = Client(ctx)
        pending = client.start()
        for _ in range(30):  # bounded
            for d in pending:
                server.receive_datagram(d, ("127.0.0.1", port), 0.0)
            for d, _ in server.datagrams_to_send():
                client.receive(d)
            pending = client.outgoing()
            if not pending:
                break
        list(server.events())
        if not client.done:
            raise SystemExit("handshake failed")

    for i in range(50):  # warm up (allocator, caches), not counted
        handshake(1000 + i)
    gc.collect()
    before = rss_bytes(os.getpid())
    for i in range(sessions):
        handshake(10_000 + i)
    gc.collect()
    after = rss_bytes(os.getpid())
    established = len(server.established())
    return {
        "sessions": established - 50,
        "rss_kb_per_session": (after - before) / 1024 / max(1, established - 50),
        "detached": server.stats["openssl_detached"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--child", choices=["on", "off"])
    args = parser.parse_args()
    sessions = max(100, min(args.sessions, 50_000))  # bounded
    if args.child:
        print(json.dumps(child(sessions, args.child == "on")))
        return
    results = {}
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.dtls_idle_memory", "--sessions", str(sessions),
             "--child", mode],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        per = r["rss_kb_per_session"]
        print(f"detach_openssl={mode:<3} {r['sessions']:>6} idle sessions: "
              f"{per:.1f} KB RSS per session (detached: {r['detached']})")  # fmt: skip
    print(json.dumps({"bench": "dtls_idle_memory", "results": results}))


if __name__ == "__main__":
    main()
