"""Server CPU of the broker's own resumed DTLS handshake against its full handshake.

    .venv/bin/python -m bench.dtls_resumed [--handshakes 200]

The broker's ``DtlsServer`` (sans-I/O, in process, no sockets, no Redis: the stored
session is handed to ``session_found`` as the listener does after its lookup) and the
simulator's OpenSSL devices. For PSK (CCM_8) and ECDHE-ECDSA with a client certificate
(CCM_8), each round is a full handshake (cookie exchange, then OpenSSL's handshake: it
issues a session id), then a reconnection from a new port naming that session (cookie
exchange, then our abbreviated handshake: ``adapters/dtls/resume.py``). Measured: the
server's CPU (``thread_time``: the server runs in this thread; ``process_time`` costs
~40 µs a call on this machine) of its ``receive_datagram`` / ``session_found`` calls and
draining its output and events, per handshake, and the datagrams both ways. Rounds run
in interleaved batches; the fastest batch of each kind counts (the machine is shared:
other load only adds time). The resolver re-check reads a dict here (the real one: its
cache). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from corem_ingress import devcerts
from corem_ingress.adapters.dtls import _binding
from corem_ingress.adapters.dtls.events import SessionIssued, SessionLookup
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.sim.dtls_client import Client, cert_context, psk_context

KEY = b"k" * 32
BATCHES = 5


@dataclass
class _Resolved:
    identity: DeviceIdentity
    psk: bytes


class _Cache:
    """The resolver's cache contract: every PSK identity, and the one device certificate."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def cached_psk(self, identity: str) -> _Resolved:
        return _Resolved(DeviceIdentity("bench", identity, CredentialKind.PSK, identity), KEY)

    def cached_cert(self, fingerprint: str, chain: Any = None) -> DeviceIdentity | None:
        if fingerprint != self.fingerprint:
            return None
        return DeviceIdentity("bench", "cert-dev", CredentialKind.X509, fingerprint)


class _Run:
    def __init__(self, server: DtlsServer) -> None:
        self.server = server
        self.cpu = 0.0
        self.up = self.down = 0
        self.issued: dict[bytes, SessionIssued] = {}
        #: CPU by the client's datagram number (1: the cookie-less ClientHello, ...).
        self.steps: list[float] = [0.0] * 8

    def handshake(self, client: Client, addr: tuple[str, int]) -> None:
        """Datagrams both ways until the client is done; a lookup answered at once."""
        pending = client.start()
        step = 0
        for _ in range(30):  # bounded
            for d in pending:
                self.up += 1
                t0 = time.thread_time()
                self.server.receive_datagram(d, addr, 0.0)
                self._answer_lookups()
                out = self.server.datagrams_to_send()
                spent = time.thread_time() - t0
                self.cpu += spent
                self.steps[min(step, 7)] += spent
                step += 1
                for reply, _to in out:
                    self.down += 1
                    client.receive(reply)
            pending = client.outgoing()
            if not pending:
                break
        if not client.done or client.failed is not None:
            raise SystemExit(f"handshake failed: {client.failed}")

    def _answer_lookups(self) -> None:
        for event in list(self.server.events()):
            if isinstance(event, SessionIssued):
                self.issued[event.session_id] = event
            elif isinstance(event, SessionLookup):
                found = self.issued.get(event.session_id)
                stored = None if found is None else found.session
                self.server.session_found(event.addr, event.session_id, stored, 0.0)
                self.server.events()  # drained with the next call


def measure(ctx: SSL.Context, server: DtlsServer, rounds: int) -> dict[str, float]:
    best = {"full": float("inf"), "resumed": float("inf")}
    steps: dict[str, list[float]] = {}
    flights: dict[str, tuple[int, int]] = {}
    port = 10_000
    per_batch = max(1, rounds // BATCHES)
    for _ in range(BATCHES):
        runs = {"full": _Run(server), "resumed": _Run(server)}
        for _ in range(per_batch):
            full, resumed = runs["full"], runs["resumed"]
            port += 2
            first = Client(ctx)
            full.handshake(first, ("127.0.0.1", port))
            session = first.conn.get_session()
            first.close()  # OpenSSL resumes only a session closed with its close_notify
            server.close(("127.0.0.1", port))
            resumed.issued = full.issued
            again = Client(ctx, session=session)
            resumed.handshake(again, ("127.0.0.1", port + 1))
            if not _binding.session_reused(again.conn):
                raise SystemExit("the reconnection was not resumed")
            server.close(("127.0.0.1", port + 1))
            server.datagrams_to_send()
            list(server.events())
            full.issued.clear()
        for name, run in runs.items():
            if run.cpu / per_batch < best[name]:
                steps[name] = [s / per_batch * 1e6 for s in run.steps[: run.up // per_batch]]
            best[name] = min(best[name], run.cpu / per_batch)
            flights[name] = (run.up // per_batch, run.down // per_batch)
    return {
        "full_server_cpu_us": best["full"] * 1e6,
        "resumed_server_cpu_us": best["resumed"] * 1e6,
        "full_datagrams_up": flights["full"][0],
        "full_datagrams_down": flights["full"][1],
        "resumed_datagrams_up": flights["resumed"][0],
        "resumed_datagrams_down": flights["resumed"][1],
        "full_steps_us": steps["full"],
        "resumed_steps_us": steps["resumed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=200)
    args = parser.parse_args()
    rounds = max(BATCHES, min(args.handshakes, 5_000))  # bounded
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = devcerts.make_ca("bench CA")
        ca.write(d / "ca.pem", d / "ca.key")
        devcerts.issue(ca, "localhost", server=True).write(d / "s.pem", d / "s.key")
        device = devcerts.issue(ca, "cert-dev")
        device.write(d / "dev.pem", d / "dev.key")
        config = DtlsConfig(handshake_rate=0.0, resumption=True, max_sessions=1_000_000)
        server = DtlsServer(
            cert_file=str(d / "s.pem"),
            key_file=str(d / "s.key"),
            ca_files=[str(d / "ca.pem")],
            credentials=_Cache(device.fingerprint),
            config=config,
        )
        cases = {
            "PSK-AES128-CCM8": psk_context(b"dev-1", KEY),
            "ECDHE-ECDSA-AES128-CCM8 (client cert)": cert_context(
                str(d / "dev.pem"), str(d / "dev.key"), str(d / "ca.pem")
            ),
        }
        print(f"{'suite':<38} {'full µs':>8} {'resumed µs':>11} {'ratio':>6} "
              f"{'datagrams full':>15} {'resumed':>8}   (server CPU; up/down)")  # fmt: skip
        results = []
        for name, ctx in cases.items():
            r = measure(ctx, server, rounds)
            results.append({"suite": name, **r})
            print(
                f"{name:<38} {r['full_server_cpu_us']:>8.0f} "
                f"{r['resumed_server_cpu_us']:>11.0f} "
                f"{r['full_server_cpu_us'] / r['resumed_server_cpu_us']:>6.1f} "
                f"{r['full_datagrams_up']:>7}/{r['full_datagrams_down']:<7} "
                f"{r['resumed_datagrams_up']:>4}/{r['resumed_datagrams_down']:<4}"
            )
            for kind in ("full", "resumed"):
                parts = " + ".join(f"{x:.0f}" for x in r[f"{kind}_steps_us"])
                print(f"    {kind} by client datagram (hello, hello+cookie, ...): {parts} µs")
    print(json.dumps({"bench": "dtls_resumed", "rounds": rounds, "results": results}))


if __name__ == "__main__":
    main()
