"""CPU and datagrams of a resumed DTLS 1.2 handshake against a full one (issue 14).

    .venv/bin/python -m bench.dtls_resumption [--handshakes 300]

The broker's ``DtlsServer`` does not resume sessions (``docs/coap-dtls.md``, "Session
resumption": the pinned binding exposes no ticket-key or session-cache callback, so
tickets cannot be shared between nodes). This bench measures what resumption would save,
on OpenSSL itself (the same library, suites and MTU as the listener), over memory BIOs in
one process: a server context with RFC 5077 tickets, a device that did one full
handshake and then resumes with its ticket (abbreviated handshake: ServerHello, CCS,
Finished / CCS, Finished), against the same device doing full handshakes. Per suite:

* the **server's CPU** per handshake (``process_time`` of its ``bio_write`` +
  ``do_handshake`` calls only; interleaved batches, the fastest batch of each kept: the
  shared machine's other load only adds time);
* the **flights** each way (memory BIOs carry each flight as one write; over UDP each
  flight here is one datagram at MTU 1252). The listener's cookie exchange (ClientHello,
  HelloVerifyRequest) comes before either and adds one datagram each way to both.

Mutual authentication for ECDHE-ECDSA (the server asks for the device's certificate), as
the listener does. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from corem_ingress.adapters.dtls import _binding
from corem_ingress.sim.dtls_client import drain

SUITES = ("PSK-AES128-CCM8", "PSK-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-CCM8")
KEY = b"k" * 32
BATCHES = 10


def _self_signed(name: str) -> tuple[crypto.X509, crypto.PKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(key)


def _context(method: int, cipher: str) -> SSL.Context:
    """DTLS 1.2, one suite, tickets on (the listener's contexts set OP_NO_TICKET)."""
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_cipher_list(f"{cipher}:@SECLEVEL=0".encode())
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_COMPRESSION)
    if method == SSL.DTLS_SERVER_METHOD:
        # Tickets only (no internal session cache): what a cluster sharing ticket keys does.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL)
        ctx.set_session_id(b"corem-bench")  # OpenSSL resumes only within one id context
    if cipher.startswith("PSK"):
        if method == SSL.DTLS_SERVER_METHOD:
            _binding.set_psk_server_callback(ctx, lambda _c, _i: KEY)
        else:
            _binding.set_psk_client_callback(ctx, lambda _c, _h: (b"bench", KEY))
    else:
        cert, key = _self_signed("server" if method == SSL.DTLS_SERVER_METHOD else "device")
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_a: True)
    return ctx


def _handshake(
    server_ctx: SSL.Context, client_ctx: SSL.Context, session: SSL.Session | None
) -> tuple[float, int, int, SSL.Connection]:
    """One handshake over memory BIOs: (server CPU s, flights up, flights down, client)."""
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    if session is not None:
        client.set_session(session)
    for conn in (server, client):
        _binding.set_mtu(conn, 1252)
    cpu, up, down = 0.0, 0, 0
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    pending = drain(client)
    for _ in range(10):  # bounded: a full handshake is 2 round trips
        if not pending:
            break
        up += 1
        t0 = time.process_time()
        server.bio_write(pending)
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        reply = drain(server)
        cpu += time.process_time() - t0
        if not reply:
            break
        down += 1
        client.bio_write(reply)
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        pending = drain(client)
    server.do_handshake()  # raises if not done
    client.do_handshake()
    if (session is not None) != _binding.session_reused(server):
        raise SystemExit(f"resumption expected={session is not None}, got the other")
    return cpu, up, down, client


def measure(cipher: str, handshakes: int) -> dict[str, float]:
    server_ctx = _context(SSL.DTLS_SERVER_METHOD, cipher)
    client_ctx = _context(SSL.DTLS_CLIENT_METHOD, cipher)
    best = {"full": float("inf"), "resumed": float("inf")}
    flights = {}
    step = max(1, handshakes // BATCHES)
    for _ in range(0, handshakes, step):
        for name, resume in (("full", False), ("resumed", True)):
            session = None
            total = 0.0
            for _ in range(step):
                if resume:
                    # A fresh ticket from an unmeasured full handshake: OpenSSL 3.0's
                    # client did not resume a second time from one SSL_SESSION, nor from
                    # the session of a resumed handshake, here.
                    *_, first = _handshake(server_ctx, client_ctx, None)
                    session = first.get_session()
                cpu, up, down, _client = _handshake(server_ctx, client_ctx, session)
                total += cpu
            best[name] = min(best[name], total / step)
            flights[name] = (up, down)
    return {
        "full_server_cpu_us": best["full"] * 1e6,
        "resumed_server_cpu_us": best["resumed"] * 1e6,
        "full_flights_up": flights["full"][0],
        "full_flights_down": flights["full"][1],
        "resumed_flights_up": flights["resumed"][0],
        "resumed_flights_down": flights["resumed"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    args = parser.parse_args()
    handshakes = max(BATCHES, min(args.handshakes, 20_000))  # bounded
    print(f"{'suite':<26} {'full µs':>8} {'resumed µs':>11} {'ratio':>6} "
          f"{'flights full':>13} {'resumed':>8}   (server CPU per handshake; up/down)")  # fmt: skip
    results = []
    for cipher in SUITES:
        r = measure(cipher, handshakes)
        results.append({"suite": cipher, **r})
        print(
            f"{cipher:<26} {r['full_server_cpu_us']:>8.0f} {r['resumed_server_cpu_us']:>11.0f} "
            f"{r['full_server_cpu_us'] / r['resumed_server_cpu_us']:>6.1f} "
            f"{r['full_flights_up']:>6}/{r['full_flights_down']:<6} "
            f"{r['resumed_flights_up']:>4}/{r['resumed_flights_down']:<4}"
        )
    print(json.dumps({"bench": "dtls_resumption", "handshakes": handshakes, "results": results}))


if __name__ == "__main__":
    main()
