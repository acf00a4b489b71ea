"""What one idle DTLS session and one idle MQTT/TLS connection cost the broker, by component.

    .venv/bin/python -m bench.session_memory [--sessions 2000] [--variants a,b] [--json-out F]

Each variant runs in fresh child processes (clean heap), no sockets: the broker's
sans-I/O ``DtlsServer`` or the MQTT listener's ``TlsSession`` (memory BIOs, the broker's
own contexts) against an in-process pyOpenSSL client. The child opens ``--sessions``
sessions one by one and drops each client once done (only the server side stays), then
reports per session: the VmRSS growth, glibc's heap in use (``mallinfo2``: OpenSSL's
allocations plus Python objects over 512 bytes), what Python holds (a second run under
``tracemalloc``, with its top lines), and, when gcc is there, a third run under
``bench/malloc_sizes.c`` (LD_PRELOAD) listing the heap blocks each session keeps by size
and by the phase that made them (object creation, handshake, first request): OpenSSL's
components show as their sizes (e.g. a 16 KiB handshake buffer, the record buffers).

* ``dtls_psk``: PSK-AES128-CCM8, handshake only (a device that has not sent yet);
* ``dtls_psk_request``: the same after one CoAP request and its answer (the usual idle);
* ``dtls_cert``: ECDHE-ECDSA-AES128-CCM8 with a client certificate, after one request;
* ``dtls_ssl_only``: the broker's ``SSL.Connection`` before any handshake;
* ``mqtt_tls13`` / ``mqtt_tls12``: the MQTT listener's mTLS session after CONNECT/CONNACK.

The Python objects of the rest of a live session (asyncio transport, MQTT/CoAP state, the
session hub) are not in these figures: ``bench.scale`` gives the whole per-session RSS.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

VARIANTS = (
    "dtls_psk",
    "dtls_psk_request",
    "dtls_cert",
    "dtls_ssl_only",
    "mqtt_tls13",
    "mqtt_tls12",
)
KEY = b"k" * 32
NOW = float(int(time.time())) + 3600.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use() -> int:
    """glibc: bytes handed out by malloc (arena + mmapped chunks)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class _Resolved:
    identity: Any
    psk: bytes


class _Cache:
    """The resolver's synchronous cache contract, every credential known."""

    def __init__(self, fingerprints: set[str]) -> None:
        self.fingerprints = fingerprints

    def cached_psk(self, identity: str) -> _Resolved:
        from corem_ingress.core.identity import CredentialKind, DeviceIdentity

        return _Resolved(DeviceIdentity("t", identity, CredentialKind.PSK, "c-" + identity), KEY)

    def cached_cert(self, fingerprint: str, chain: Any = None) -> Any:
        from corem_ingress.core.identity import CredentialKind, DeviceIdentity

        return DeviceIdentity("t", fingerprint[:16], CredentialKind.X509, "c-" + fingerprint)


class Pump:
    """Drives one variant's sessions over memory BIOs (no sockets)."""

    def __init__(self, variant: str, n: int) -> None:
        from OpenSSL import SSL

        from corem_ingress import devcerts
        from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
        from corem_ingress.adapters.mqtt import tls
        from corem_ingress.config import MqttConfig
        from corem_ingress.sim.dtls_client import cert_context, psk_context

        self.variant = variant
        work = Path(tempfile.mkdtemp(prefix="corem-session-mem-"))
        ca = devcerts.make_ca("mem CA")
        ca.write(work / "ca.pem", work / "ca.key")
        devcerts.issue(ca, "localhost", server=True).write(work / "s.pem", work / "s.key")
        device = devcerts.issue(ca, "mem-device")
        device.write(work / "d.pem", work / "d.key")
        self.dtls = DtlsServer(
            cert_file=str(work / "s.pem"),
            key_file=str(work / "s.key"),
            ca_files=[str(work / "ca.pem")],
            credentials=_Cache({device.fingerprint}),
            config=DtlsConfig(handshake_rate=0.0, max_sessions=n + 200, max_pending=n + 200),
        )
        if variant.startswith("dtls_cert"):
            self.client_ctx = cert_context(
                str(work / "d.pem"), str(work / "d.key"), str(work / "ca.pem")
            )
        elif variant.startswith("dtls"):
            self.client_ctx = psk_context(b"dev1", KEY)
        else:
            self.mqtt_ctx = tls.server_context(
                MqttConfig(
                    server_cert=str(work / "s.pem"),
                    server_key=str(work / "s.key"),
                    client_ca_files=[str(work / "ca.pem")],
                )
            )
            ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
            if variant == "mqtt_tls12":
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
            ctx.use_certificate_file(str(work / "d.pem"))
            ctx.use_privatekey_file(str(work / "d.key"))
            self.client_ctx = ctx
        self.held: list[Any] = []
        self.count = 0

    def new(self) -> tuple[Any, Any]:
        """Phase 1: the server's per-session object. -> (server side, client)."""
        from OpenSSL import SSL

        from corem_ingress.adapters.mqtt.tls import TlsSession
        from corem_ingress.sim.dtls_client import Client

        i = self.count = self.count + 1
        if self.variant.startswith("dtls"):
            addr = (f"127.{i // 60000}.{(i // 250) % 240}.{i % 250}", 1024 + i % 60000)
            if self.variant == "dtls_ssl_only":
                return self.dtls._new_connection(self.dtls._psk_ctx), None
            return addr, Client(self.client_ctx)
        client = SSL.Connection(self.client_ctx, None)
        client.set_connect_state()
        return TlsSession(self.mqtt_ctx), client

    def handshake(self, server: Any, client: Any) -> None:
        """Phase 2."""
        from OpenSSL import SSL

        from corem_ingress.adapters.dtls.events import CredentialNeeded

        if client is None:
            return
        if self.variant.startswith("dtls"):
            pending = client.start()
            for _ in range(30):  # bounded
                for d in pending:
                    self.dtls.receive_datagram(d, server, NOW)
                for ev in list(self.dtls.events()):
                    if isinstance(ev, CredentialNeeded):
                        self.dtls.credential_resolved(ev.addr, NOW)
                for d, _to in self.dtls.datagrams_to_send():
                    client.receive(d)
                pending = client.outgoing()
                if not pending and client.done:
                    return
            raise RuntimeError(f"DTLS handshake failed: {client.failed}")
        for _ in range(20):  # bounded
            with contextlib.suppress(SSL.WantReadError):
                client.do_handshake()
            out = _drain(client)
            if out:
                server.receive(out)
            back = server.outgoing()
            if back:
                client.bio_write(back)
            if server.handshake_done and not back:
                return
        raise RuntimeError("TLS handshake failed")

    def request(self, server: Any, client: Any) -> None:
        """Phase 3: one record each way (a CoAP request and its answer; CONNECT/CONNACK)."""
        if client is None:
            return
        if self.variant.startswith("dtls"):
            for d in client.send(b"\x40\x01\x00\x01"):
                self.dtls.receive_datagram(d, server, NOW)
            list(self.dtls.events())
            self.dtls.send(server, b"\x60\x45\x00\x01")
            for d, _to in self.dtls.datagrams_to_send():
                client.receive(d)
            return
        client.send(b"\x10\x10" + b"\x00" * 16)
        server.receive(_drain(client))
        server.send(b"\x20\x02\x00\x00")
        client.bio_write(server.outgoing())
        client.recv(100)


def _drain(conn: Any) -> bytes:
    from OpenSSL import SSL

    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def child(variant: str, n: int, trace: bool, tracer: Any) -> dict[str, Any]:
    pump = Pump(variant, n)
    with_request = variant.endswith("_request") or variant.startswith(("mqtt", "dtls_cert"))

    def one(tagged: bool) -> None:
        tag = tracer is not None and tagged
        if tag:
            tracer.mt_arm(1, ctypes.c_size_t(64))
        server, client = pump.new()
        if tag:
            tracer.mt_arm(2, ctypes.c_size_t(64))
        pump.handshake(server, client)
        if with_request:
            if tag:
                tracer.mt_arm(3, ctypes.c_size_t(64))
            pump.request(server, client)
        if tag:
            tracer.mt_arm(0, ctypes.c_size_t(64))
        pump.held.append(server)  # the client is dropped: only the server side stays

    for _ in range(50):  # warm up: contexts, caches, first allocations
        one(False)
    gc.collect()
    if trace:
        tracemalloc.start()
    base_rss, base_heap = rss(), heap_in_use()
    base_py = tracemalloc.get_traced_memory()[0] if trace else 0
    for _ in range(n):
        one(True)
    gc.collect()
    out: dict[str, Any] = {
        "variant": variant,
        "sessions": n,
        "rss_kb": round((rss() - base_rss) / n / 1024, 2),
        "heap_kb": round((heap_in_use() - base_heap) / n / 1024, 2),
    }
    if variant.startswith("dtls") and variant != "dtls_ssl_only":
        out["established"] = len(pump.dtls.established())
    if trace:
        out["python_kb"] = round((tracemalloc.get_traced_memory()[0] - base_py) / n / 1024, 2)
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        out["python_top"] = [
            [f"{s.traceback[0].filename.rsplit('/', 1)[-1]}:{s.traceback[0].lineno}", s.size // n]
            for s in snap.statistics("lineno")[:10]
        ]
    if tracer is not None:
        out["blocks"] = live_blocks(tracer, n)
    return out


PHASES = {1: "object", 2: "handshake", 3: "first request"}


def live_blocks(tracer: Any, n: int) -> list[list[Any]]:
    """Heap blocks (>= 64 bytes) still live, made by the measured sessions: [phase, size,
    the functions that allocated it (innermost first), blocks per session] for those at
    least every other session keeps, and the total per phase."""
    path = Path(tempfile.mkdtemp(prefix="corem-blocks-")) / "dump.txt"
    tracer.mt_dump(str(path).encode())
    symbols = _Symbols()
    counts: dict[tuple[int, int, str], int] = {}
    totals: dict[int, int] = {}
    for line in path.read_text().splitlines():
        tag_s, size_s, *frames = line.split()
        tag, size = int(tag_s), int(size_s)
        if tag:
            key = (tag, size, symbols.caller(frames))
            counts[key] = counts.get(key, 0) + 1
            totals[tag] = totals.get(tag, 0) + size
    rows: list[list[Any]] = [
        [
            "total KB per session by phase",
            {PHASES[t]: round(b / n / 1024, 2) for t, b in sorted(totals.items())},
        ]
    ]
    for (t, size, where), k in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        if k / n >= 0.5:
            rows.append([PHASES[t], size, where, round(k / n, 1)])
    return rows


#: Allocator wrappers: the block is named after the first frame that is none of these.
_WRAPPERS = (
    "CRYPTO_", "OPENSSL_", "BUF_MEM_", "PyMem_", "_PyMem_", "PyObject_Malloc", "_PyObject_",
    "PyObject_Realloc", "OPENSSL_sk", "ossl_sk", "sk_", "_Py", "malloc", "calloc", "realloc",
)  # fmt: skip


class _Symbols:
    """Return addresses -> function names, from /proc/self/maps and ``nm``."""

    def __init__(self) -> None:
        #: Executable ranges and the load base of their file (symbol value + base).
        self.maps: list[tuple[int, int, int, str]] = []
        bases: dict[str, int] = {}
        lines = [ln.split() for ln in Path("/proc/self/maps").read_text().splitlines()]
        for parts in lines:
            if len(parts) >= 6 and int(parts[2], 16) == 0:
                lo = int(parts[0].split("-")[0], 16)
                bases[parts[5]] = min(lo, bases.get(parts[5], lo))
        for parts in lines:
            if len(parts) >= 6 and "x" in parts[1] and parts[5] in bases:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                self.maps.append((lo, hi, bases[parts[5]], parts[5]))
        self.tables: dict[str, tuple[list[int], list[str]]] = {}

    def _table(self, path: str) -> tuple[list[int], list[str]]:
        if path not in self.tables:
            out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True)
            rows = [ln.split()[:3] for ln in out.stdout.splitlines() if ln.count(" ") >= 2]
            syms = sorted((int(a, 16), name) for a, kind, name in rows if kind in "tTwW")
            self.tables[path] = ([a for a, _ in syms], [n for _, n in syms])
        return self.tables[path]

    def name(self, address: int) -> str:
        import bisect

        for lo, hi, base, path in self.maps:
            if lo <= address < hi:
                addrs, names = self._table(path)
                # Executables not built as PIE have absolute symbol values.
                rel = address - base if addrs and addrs[0] < base else address
                i = bisect.bisect_right(addrs, rel) - 1
                return names[i] if i >= 0 else "?"
        return "?"

    def caller(self, frames: list[str]) -> str:
        names = [self.name(int(f, 16)) for f in frames if f not in ("(nil)", "0x0")]
        useful = [n for n in names if not n.startswith(_WRAPPERS)]
        return " < ".join(useful[:3]) or " < ".join(names[:3])


def build_tracer() -> Path | None:
    """bench/malloc_sizes.c as a shared object (None without gcc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="corem-malloc-sizes-")) / "libmalloc_sizes.so"
    src = ROOT / "bench" / "malloc_sizes.c"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-blocks", action="store_true", help="skip the heap-block run")
    ap.add_argument("--json-out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tracer = ctypes.CDLL(os.environ["COREM_MALLOC_SIZES"]) if args.mode == "blocks" else None
        print(json.dumps(child(args.child, args.sessions, args.mode == "trace", tracer)))
        return 0
    lib = None if args.no_blocks else build_tracer()
    modes = ["plain", "trace"] + (["blocks"] if lib else [])
    results: dict[str, Any] = {"bench": "session_memory", "sessions": args.sessions}
    for variant in args.variants.split(","):
        row: dict[str, Any] = {}
        for mode in modes:
            env = dict(os.environ)
            if mode == "blocks":
                env.update(LD_PRELOAD=str(lib), COREM_MALLOC_SIZES=str(lib))
            cmd = [sys.executable, "-m", "bench.session_memory", "--child", variant]
            cmd += ["--sessions", str(args.sessions), "--mode", mode]
            run = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
            )
            if run.returncode != 0:
                print(run.stderr[-2000:], file=sys.stderr)
                return 1
            got = json.loads(run.stdout.strip().splitlines()[-1])
            if mode == "plain":
                row.update(got)
            elif mode == "trace":
                row.update(python_kb=got["python_kb"], python_top=got["python_top"])
            else:
                row["blocks"] = got["blocks"]
        results[variant] = row
        print(
            f"{variant:<18} RSS {row['rss_kb']:>6} KB  heap {row['heap_kb']:>6} KB  "
            f"Python {row['python_kb']:>5} KB per session"
        )
        for block in row.get("blocks", []):
            print("    " + "  ".join(str(x) for x in block))
    print(json.dumps(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
