"""Per-record cost of the DTLS Connection ID record layer against OpenSSL's (issue 14).

    .venv/bin/python -m bench.dtls_cid [--records 20000] [--sizes 64,512] [--devices 1000]

Once a CID session is established the broker protects and unprotects its epoch-1 records
itself (``adapters/dtls/cid_session.py``, ``cryptography``'s AEADs) instead of OpenSSL's
record layer. For each suite and payload size this measures, in one process on one core:

* **out** (server -> device): OpenSSL ``SSL_write`` + reading the record from the memory
  BIO, against ``CidSession.protect`` (a ``tls12_cid`` record with an 8-byte CID);
* **in** (device -> server): writing a record into the memory BIO + ``SSL_read``, against
  ``CidSession.unprotect`` (replay window, CID check, AEAD open, inner plaintext).

Both read distinct, fresh records (a replayed record would be dropped by either). The
keys are the same: the CID session's are derived from the OpenSSL session's master
secret. CPU time (``process_time``) of interleaved batches, the fastest batch of each kept
(the machine is shared: other load only adds time).

Then **rebinding devices** (``--devices N``, sans-I/O: the broker's ``DtlsServer`` and the
simulator's OpenSSL devices in one process, no sockets): N PSK devices (CCM_8) hold a
session; each one's NAT rebinds (a new source port) and it sends one 64-byte uplink. With
a CID the server finds the session by its CID and moves it: one datagram. Without, the
record from the new port has no session: the device handshakes again (cookie exchange and
the full PSK handshake) and then sends. Measured: the server's CPU per rebinding (only its
``receive_datagram`` calls and what they trigger), the datagrams both ways, and the memory
of N established sessions (tracemalloc, Python side; OpenSSL's native buffers are not
seen by it) with and without CID. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from corem_ingress.adapters.dtls import _binding, cid
from corem_ingress.adapters.dtls.cid_session import CidSession
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.sim.dtls_client import (
    Client,
    connected_pair,
    drain,
    dtls12_context,
    psk_context,
)

SUITES = {name: cid.SUITE_IDS[name] for name in ("PSK-AES128-CCM8", "PSK-AES128-GCM-SHA256")}
CID = bytes.fromhex("a1b2c3d4e5f60718")
#: The records are measured in this many interleaved batches; the fastest batch counts.
BATCHES = 10


def pair(cipher: str) -> tuple[SSL.Connection, SSL.Connection]:
    server_ctx = dtls12_context(SSL.DTLS_SERVER_METHOD, cipher)
    client_ctx = dtls12_context(SSL.DTLS_CLIENT_METHOD, cipher)
    _binding.set_psk_server_callback(server_ctx, lambda _c, _i: b"k" * 32)
    _binding.set_psk_client_callback(client_ctx, lambda _c, _h: (b"bench", b"k" * 32))
    return connected_pair(server_ctx, client_ctx)


def measure(cipher: str, size: int, records: int) -> dict[str, float]:
    server, client = pair(cipher)
    payload = b"p" * size
    state = CidSession(peer_cid=CID, own_cid=CID)
    master, cr, sr = server.master_key(), server.client_random(), server.server_random()
    assert master and cr and sr
    state.set_keys(SUITES[cipher], master, cr, sr)
    state.write_seq = 1
    # The device's records: OpenSSL's (plain) and ours (tls12_cid), distinct sequence numbers.
    plain_in = []
    for _ in range(records):
        client.send(payload)
        plain_in.append(drain(client))
    keys = cid.KeyBlock.derive(cid.SUITES[SUITES[cipher]], master, cr, sr)
    device = cid.RecordCipher(cid.SUITES[SUITES[cipher]], keys.client_key, keys.client_salt)
    cid_in_records = [device.seal(23, 1, seq, payload, CID) for seq in range(1, records + 1)]

    def openssl_out(batch: range) -> None:
        for _ in batch:
            server.send(payload)
            server.bio_read(65536)

    def cid_out(batch: range) -> None:
        for _ in batch:
            state.protect(23, payload)

    def openssl_in(batch: range) -> None:
        for i in batch:
            server.bio_write(plain_in[i])
            server.recv(65536)

    def cid_in(batch: range) -> None:
        for i in batch:
            if state.unprotect(cid_in_records[i]) is None:
                raise SystemExit("a CID record did not open")

    # Interleaved batches, the best of each kept: the shared machine's other load only
    # ever adds time.
    best = dict.fromkeys(("openssl_out", "cid_out", "openssl_in", "cid_in"), float("inf"))
    step = max(1, records // BATCHES)
    for start in range(0, records, step):
        batch = range(start, min(records, start + step))
        for name, run in (
            ("openssl_out", openssl_out),
            ("cid_out", cid_out),
            ("openssl_in", openssl_in),
            ("cid_in", cid_in),
        ):
            t0 = time.process_time()
            run(batch)
            best[name] = min(best[name], (time.process_time() - t0) / len(batch))
    return {f"{name}_us": seconds * 1e6 for name, seconds in best.items()}


@dataclass
class _Resolved:
    identity: DeviceIdentity
    psk: bytes


class _Cache:
    """Every ``dev-N`` identity has the same key (the resolver's cache contract)."""

    def cached_psk(self, identity: str) -> _Resolved:
        return _Resolved(DeviceIdentity("bench", identity, CredentialKind.PSK, identity), KEY)

    def cached_cert(self, fingerprint: str, chain: Any = None) -> None:
        return None


KEY = b"k" * 32


class _Wire:
    """Counts datagrams and the server's CPU between a DtlsServer and its devices."""

    def __init__(self, server: DtlsServer) -> None:
        self.server = server
        self.up = self.down = 0
        self.cpu = 0.0

    def deliver(self, datagrams: list[bytes], addr: tuple[str, int], device: Client) -> None:
        pending = datagrams
        for _ in range(30):
            for d in pending:
                self.up += 1
                t0 = time.process_time()
                self.server.receive_datagram(d, addr, 0.0)
                out = self.server.datagrams_to_send()
                list(self.server.events())
                self.cpu += time.process_time() - t0
                for reply, _to in out:
                    self.down += 1
                    device.receive(reply)
            pending = device.outgoing()
            if not pending:
                return


def _server_heap() -> int:
    """Python heap held by the server: traces with no device (simulator) frame."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/sim/dtls_client.py", all_frames=True)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def rebinding(devices: int, use_cid: bool) -> dict[str, float]:
    server = DtlsServer(
        cert_file=None,
        key_file=None,
        ca_files=[],
        credentials=_Cache(),
        config=DtlsConfig(
            handshake_rate=0.0,
            max_sessions=4 * devices + 10,
            max_pending=devices + 10,
            max_pending_per_source=0,
        ),
    )
    wire = _Wire(server)
    fleet = []
    tracemalloc.start(30)
    before = _server_heap()
    for n in range(devices):
        device = Client(psk_context(f"dev-{n}".encode(), KEY), cid=b"\x01" if use_cid else None)
        addr = (f"10.0.{n // 250}.{n % 250 + 1}", 40000)
        wire.deliver(device.start(), addr, device)
        assert device.done, "handshake failed"
        fleet.append((device, addr))
    memory = (_server_heap() - before) / devices
    tracemalloc.stop()
    wire.up = wire.down = 0
    wire.cpu = 0.0
    payload = b"u" * 64
    handshakes = server.stats["handshakes_completed"]
    for n, (device, (ip, port)) in enumerate(fleet):
        new_addr = (ip, port + 1)  # the NAT's new mapping
        if use_cid:
            wire.deliver(device.send(payload), new_addr, device)
        else:
            again = Client(psk_context(f"dev-{n}".encode(), KEY))
            wire.deliver(again.start(), new_addr, again)
            assert again.done, "handshake failed"
            wire.deliver(again.send(payload), new_addr, again)
    assert server.stats["handshakes_completed"] - handshakes == (0 if use_cid else devices)
    return {
        "server_cpu_us_per_rebinding": wire.cpu / devices * 1e6,
        "datagrams_up_per_rebinding": wire.up / devices,
        "datagrams_down_per_rebinding": wire.down / devices,
        "server_python_bytes_per_session": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    records = max(1, min(args.records, 200_000))  # bounded
    results = []
    print(f"{'suite':<24} {'bytes':>5} {'OpenSSL out':>12} {'CID out':>9} "
          f"{'OpenSSL in':>11} {'CID in':>8}   (µs per record)")  # fmt: skip
    for cipher in SUITES:
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(cipher, size, records)
            results.append({"suite": cipher, "bytes": size, **r})
            print(
                f"{cipher:<24} {size:>5} {r['openssl_out_us']:>12.1f} {r['cid_out_us']:>9.1f} "
                f"{r['openssl_in_us']:>11.1f} {r['cid_in_us']:>8.1f}"
            )
    devices = max(1, min(args.devices, 20_000))  # bounded
    fleet = {}
    print(f"\n{devices} devices rebinding once each (sans-I/O, PSK-AES128-CCM8, 64-byte uplink)")
    print(f"{'':<12} {'server CPU µs':>14} {'datagrams up':>13} {'down':>6} {'B/session':>10}")
    for label, use_cid in (("with CID", True), ("without CID", False)):
        r = rebinding(devices, use_cid)
        fleet[label] = r
        print(
            f"{label:<12} {r['server_cpu_us_per_rebinding']:>14.0f} "
            f"{r['datagrams_up_per_rebinding']:>13.1f} {r['datagrams_down_per_rebinding']:>6.1f} "
            f"{r['server_python_bytes_per_session']:>10.0f}"
        )
    print(
        json.dumps(
            {
                "bench": "dtls_cid",
                "records": records,
                "results": results,
                "devices": devices,
                "rebinding": fleet,
            }
        )
    )


if __name__ == "__main__":
    main()
