"""Per-record cost of the DTLS Connection ID record layer against OpenSSL's (issue 14).

    .venv/bin/python -m bench.dtls_cid [--records 20000] [--sizes 64,512]

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
(the machine is shared: other load only adds time). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from OpenSSL import SSL

from corem_ingress.adapters.dtls import _binding, cid
from corem_ingress.adapters.dtls.cid_session import CidSession

SUITES = {"PSK-AES128-CCM8": 0xC0A8, "PSK-AES128-GCM-SHA256": 0x00A8}
CID = bytes.fromhex("a1b2c3d4e5f60718")
#: The records are measured in this many interleaved batches; the fastest batch counts.
BATCHES = 10


def _context(method: int, cipher: str) -> SSL.Context:
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_cipher_list(f"{cipher}:@SECLEVEL=0".encode())
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    return ctx


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


def pair(cipher: str) -> tuple[SSL.Connection, SSL.Connection]:
    server_ctx = _context(SSL.DTLS_SERVER_METHOD, cipher)
    client_ctx = _context(SSL.DTLS_CLIENT_METHOD, cipher)
    _binding.set_psk_server_callback(server_ctx, lambda _c, _i: b"k" * 32)
    _binding.set_psk_client_callback(client_ctx, lambda _c, _h: (b"bench", b"k" * 32))
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for conn in (server, client):
        _binding.set_mtu(conn, 1400)
    fed = {client: True, server: False}
    for _ in range(20):
        for conn, other in ((client, server), (server, client)):
            if fed[conn]:
                with contextlib.suppress(SSL.WantReadError):
                    conn.do_handshake()
            data = _drain(conn)
            if data:
                other.bio_write(data)
                fed[other] = True
    server.do_handshake()
    return server, client


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
        plain_in.append(_drain(client))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--sizes", default="64,512")
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
    print(json.dumps({"bench": "dtls_cid", "records": records, "results": results}))


if __name__ == "__main__":
    main()
