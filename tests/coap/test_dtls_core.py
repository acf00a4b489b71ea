"""The sans-I/O DTLS server core with the in-process pyOpenSSL client: no event loop,
no sockets, the clock passed in."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from corem_ingress import devcerts
from corem_ingress.adapters.dtls import records
from corem_ingress.adapters.dtls.events import (
    ApplicationData,
    CredentialNeeded,
    HandshakeCompleted,
    SessionClosed,
)
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.core.causes import Cause
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.core.errors import Unauthenticated
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain, TenantTrust
from corem_ingress.sim.dtls_client import Client, cert_context, psk_context

KEY = b"k" * 32
# The core's clock: near real time (certificates made here are valid from 5 minutes before
# they are issued), an hour ahead so that a long test run never reaches it first.
NOW = float(int(time.time())) + 3600.0


@dataclass
class Resolved:
    identity: DeviceIdentity
    psk: bytes


class FakeCache:
    """The resolver's synchronous cache contract: known, known-bad (raises) or None."""

    def __init__(self) -> None:
        self.psks: dict[str, bytes] = {"dev1": KEY}
        self.certs: dict[str, DeviceIdentity] = {}
        self.bad: set[str] = {"revoked"}
        self.unknown_to_cache: set[str] = set()
        #: The resolved tenant's trust (None: not checked) and the chains it was asked about.
        self.trust: TenantTrust | None = None
        self.proven: set[str] = set()
        self.chains: list[PeerChain] = []

    def cached_psk(self, identity: str) -> Resolved | None:
        if identity in self.bad:
            raise Unauthenticated()
        if identity in self.unknown_to_cache or identity not in self.psks:
            return None
        return Resolved(
            DeviceIdentity("t", identity, CredentialKind.PSK, "c-" + identity), self.psks[identity]
        )

    def cached_cert(
        self, fingerprint: str, chain: PeerChain | None = None
    ) -> DeviceIdentity | None:
        if fingerprint in self.bad:
            raise Unauthenticated()
        identity = self.certs.get(fingerprint)
        if identity is not None and chain is not None and self.trust is not None:
            self.chains.append(chain)
            if not self.trust.admits(chain, proven_self_signed=fingerprint in self.proven):
                raise Unauthenticated(cause=Cause.FOREIGN_CA)
        return identity


def make_server(cache: FakeCache | None = None, **cfg: object) -> DtlsServer:
    return DtlsServer(
        cert_file=None,
        key_file=None,
        ca_files=[],
        credentials=cache or FakeCache(),
        config=DtlsConfig(**cfg),  # type: ignore[arg-type]
    )


def make_cert_server(
    tmp_path: Path, ca: devcerts.Issued, cache: FakeCache | None = None
) -> DtlsServer:
    """A server with a certificate from ``ca``, trusting ``ca`` for device certificates
    (written as tmp_path/ca.pem), no handshake rate limit."""
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp_path / "s.pem", tmp_path / "s.key")
    return DtlsServer(
        cert_file=str(tmp_path / "s.pem"),
        key_file=str(tmp_path / "s.key"),
        ca_files=[str(tmp_path / "ca.pem")],
        credentials=cache or FakeCache(),
        config=DtlsConfig(handshake_rate=0.0),
    )


def transfer(
    server: DtlsServer, client: Client, addr: tuple[str, int], first: list[bytes], now: float = NOW
) -> None:
    pending = first
    for _ in range(30):  # bounded
        for d in pending:
            server.receive_datagram(d, addr, now)
        for d, to in server.datagrams_to_send():
            assert to == addr
            client.receive(d)
        pending = client.outgoing()
        if not pending:
            return


def handshake(
    server: DtlsServer, addr: tuple[str, int], ident: bytes = b"dev1", key: bytes = KEY
) -> Client:
    client = Client(psk_context(ident, key))
    transfer(server, client, addr, client.start())
    return client


ADDR = ("127.0.0.1", 40000)


@pytest.mark.unit
def test_psk_handshake_data_both_ways_and_close_notify_frees_at_once() -> None:
    server = make_server()
    client = handshake(server, ADDR)
    assert client.done and client.failed is None
    (ev,) = list(server.events())
    assert isinstance(ev, HandshakeCompleted) and ev.credential is not None
    assert ev.credential.lookup == "dev1" and ev.cipher == "PSK-AES128-CCM8"
    transfer(server, client, ADDR, client.send(b"ping"))
    assert list(server.events()) == [ApplicationData(ADDR, b"ping")]
    assert server.send(ADDR, b"server-initiated")
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    assert client.received == [b"server-initiated"]
    transfer(server, client, ADDR, client.close())
    assert list(server.events()) == [SessionClosed(ADDR, Cause.PEER_CLOSED, True, "close_notify")]
    assert len(server) == 0


@pytest.mark.unit
def test_server_close_sends_close_notify_and_forgets() -> None:
    server = make_server()
    client = handshake(server, ADDR)
    list(server.events())
    assert server.close(ADDR, Cause.CREDENTIAL_REVOKED)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    assert client.closed
    assert len(server) == 0 and not server.send(ADDR, b"x")
    assert list(server.events()) == [SessionClosed(ADDR, Cause.CREDENTIAL_REVOKED, True)]


@pytest.mark.unit
def test_cookie_less_client_hello_flood_keeps_no_state() -> None:
    server = make_server()
    hello = Client(psk_context(b"dev1", KEY)).start()
    assert records.client_hello_cookie(hello[0]) == b""
    tracemalloc.start()
    try:
        for i in range(500):  # warm up
            server.receive_datagram(hello[0], ("127.0.0.1", 1000 + i), NOW)
            server.datagrams_to_send()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            server.receive_datagram(hello[0], (f"127.0.{i // 250}.{i % 250}", 2000 + i), NOW)
            out = server.datagrams_to_send()
            assert len(out) == 1  # a HelloVerifyRequest, nothing else
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(server) == 0
    assert server.stats["hello_verify"] == 20_500
    assert after - before < 64 * 1024, after - before


@pytest.mark.unit
def test_garbage_datagrams_are_dropped_and_nothing_breaks() -> None:
    server = make_server()
    rng = __import__("random").Random(7)
    hello = Client(psk_context(b"dev1", KEY)).start()[0]
    samples = [b"", b"\x00", b"\x16\xfe\xfd", os.urandom(13), hello[:40], hello + b"\x00" * 3]
    samples += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(300)]
    # Client hellos with a mangled body or a forged cookie.
    for _i in range(200):
        b = bytearray(hello)
        b[rng.randrange(13, len(b))] ^= 1 << rng.randrange(8)
        samples.append(bytes(b))
    for i, s in enumerate(samples):
        server.receive_datagram(s, ("127.0.0.1", 3000 + i), NOW)
        server.datagrams_to_send()
    assert len(server) == 0
    # And the server still works.
    assert handshake(server, ADDR).done


@pytest.mark.unit
def test_wrong_psk_fails_with_alert_and_drops_half_open_state() -> None:
    server = make_server()
    client = handshake(server, ADDR, key=b"x" * 32)
    assert not client.done and client.failed is not None
    assert "decrypt error" in str(client.failed)
    assert len(server) == 0


@pytest.mark.unit
@pytest.mark.parametrize("ident", [b"unknown", b"revoked"])
def test_unknown_or_revoked_identity_fails_with_alert(ident: bytes) -> None:
    cache = FakeCache()
    server = make_server(cache)
    client = Client(psk_context(ident, KEY))
    transfer(server, client, ADDR, client.start())
    if ident == b"unknown":
        # The cache cannot vouch: the handshake waits for the async lookup.
        (ev,) = list(server.events())
        assert ev == CredentialNeeded(ADDR, CredentialKind.PSK, "unknown")
        server.credential_resolved(ADDR, NOW)  # lookup done, still nothing in the cache
        for d, _ in server.datagrams_to_send():
            client.receive(d)
    assert client.failed is not None and "unknown psk identity" in str(client.failed)
    assert len(server) == 0


@pytest.mark.unit
def test_deferred_psk_lookup_completes_the_handshake() -> None:
    cache = FakeCache()
    cache.unknown_to_cache.add("dev1")
    server = make_server(cache)
    client = Client(psk_context(b"dev1", KEY))
    transfer(server, client, ADDR, client.start())
    (ev,) = list(server.events())
    assert isinstance(ev, CredentialNeeded)
    cache.unknown_to_cache.clear()  # the async resolve filled the cache
    server.credential_resolved(ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    transfer(server, client, ADDR, client.outgoing())
    assert client.done
    assert isinstance(next(server.events()), HandshakeCompleted)


@pytest.mark.unit
def test_certificate_handshake_self_signed_and_expired(tmp_path: Path) -> None:
    import datetime as dt

    ca = devcerts.make_ca("core CA")
    srv = devcerts.issue(ca, "localhost", server=True)
    srv.write(tmp_path / "s.pem", tmp_path / "s.key")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    utcnow = dt.datetime.now(dt.UTC)
    dev = devcerts.issue(
        None,
        "self-signed-dev",
        not_before=utcnow - dt.timedelta(hours=1),
        not_after=utcnow + dt.timedelta(days=1),
    )
    dev.write(tmp_path / "d.pem", tmp_path / "d.key")
    from cryptography.hazmat.primitives.serialization import Encoding

    fp = fingerprint_der(dev.cert.public_bytes(Encoding.DER))
    cache = FakeCache()
    cache.certs[fp] = DeviceIdentity("t", "d1", CredentialKind.X509, fp)
    date = [dt.datetime.now(dt.UTC).timestamp()]
    server = DtlsServer(
        cert_file=str(tmp_path / "s.pem"),
        key_file=str(tmp_path / "s.key"),
        ca_files=[str(tmp_path / "ca.pem")],
        credentials=cache,
        wall_clock=lambda: date[0],  # validity is checked against dates, not ``now``
    )
    ctx = cert_context(str(tmp_path / "d.pem"), str(tmp_path / "d.key"), str(tmp_path / "ca.pem"))
    client = Client(ctx)
    transfer(server, client, ADDR, client.start())
    assert client.done, client.failed
    ev = next(server.events())
    assert isinstance(ev, HandshakeCompleted) and ev.cipher == "ECDHE-ECDSA-AES128-CCM8"
    assert ev.credential is not None and ev.credential.identity.device_id == "d1"
    # Same cert, but our clock is past its notAfter: refused.
    client2 = Client(
        cert_context(str(tmp_path / "d.pem"), str(tmp_path / "d.key"), str(tmp_path / "ca.pem"))
    )
    date[0] += 2 * 86_400
    transfer(server, client2, ("127.0.0.1", 40001), client2.start())
    assert not client2.done and client2.failed is not None
    assert server.stats["closed:certificate_expired"] == 1


@pytest.mark.unit
def test_certificate_chain_must_end_in_a_ca_of_the_resolved_tenant(tmp_path: Path) -> None:
    """Issue 12 §1: the fingerprint resolves to (tenant, device), and the chain the device
    presented must end in one of that tenant's CAs, else FOREIGN_CA (alert, no session)."""
    import datetime as dt

    ours, theirs = devcerts.make_ca("tenant CA"), devcerts.make_ca("another tenant's CA")
    srv = devcerts.issue(ours, "localhost", server=True)
    srv.write(tmp_path / "s.pem", tmp_path / "s.key")
    (tmp_path / "cas.pem").write_bytes(ours.cert_pem + theirs.cert_pem)  # the global bound
    dev = devcerts.issue(theirs, "their-device")
    dev.write(tmp_path / "d.pem", tmp_path / "d.key")
    lone = devcerts.issue(None, "self-signed")
    lone.write(tmp_path / "l.pem", tmp_path / "l.key")
    cache = FakeCache()
    for cert in (dev, lone):
        cache.certs[cert.fingerprint] = DeviceIdentity("t", "d", CredentialKind.X509, "c")
    server = DtlsServer(
        cert_file=str(tmp_path / "s.pem"),
        key_file=str(tmp_path / "s.key"),
        ca_files=[str(tmp_path / "cas.pem")],
        credentials=cache,
    )
    now = dt.datetime.now(dt.UTC).timestamp()
    port = iter(range(41000, 41100))

    def connect(name: str) -> Client:
        ctx = cert_context(
            str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"), str(tmp_path / "cas.pem")
        )
        client = Client(ctx)
        transfer(server, client, ("127.0.0.1", next(port)), client.start(), now=now)
        return client

    # Resolved to a tenant that trusts only "ours": refused, whatever the global bound says.
    cache.trust = TenantTrust(frozenset({ours.fingerprint}))
    refused = connect("d")
    assert not refused.done and refused.failed is not None
    assert server.stats["closed:foreign_ca"] == 1 and len(server) == 0
    assert cache.chains[-1] == PeerChain((theirs.fingerprint,))
    # The tenant that trusts "theirs": the handshake completes, the session keeps the chain.
    cache.trust = TenantTrust(frozenset({theirs.fingerprint}))
    assert connect("d").done
    ev = [e for e in server.events() if isinstance(e, HandshakeCompleted)][-1]
    assert ev.credential is not None and ev.credential.chain == PeerChain((theirs.fingerprint,))
    # A lone self-signed leaf: only where the tenant allows it and it was registered with
    # proof of possession.
    assert not connect("l").done
    cache.trust = TenantTrust(frozenset(), allow_self_signed=True)
    assert not connect("l").done
    cache.proven.add(lone.fingerprint)
    assert connect("l").done
    assert server.stats["closed:foreign_ca"] == 3


@pytest.mark.unit
def test_every_datagram_is_whole_records_within_the_mtu(tmp_path: Path) -> None:
    ca = devcerts.make_ca("mtu CA")
    # A long chain: server cert + intermediate make the server's flight exceed a small MTU.
    srv = devcerts.issue(ca, "localhost", server=True)
    (tmp_path / "chain.pem").write_bytes(srv.cert_pem + ca.cert_pem)
    (tmp_path / "s.key").write_bytes(srv.key_pem)
    server = DtlsServer(
        cert_file=str(tmp_path / "chain.pem"),
        key_file=str(tmp_path / "s.key"),
        ca_files=[],
        credentials=FakeCache(),
        config=DtlsConfig(mtu=400),
    )
    # Any client cert will do: we only look at what the server sends.
    client = Client(
        cert_context(str(tmp_path / "chain.pem"), str(tmp_path / "s.key"), None), mtu=372
    )
    sizes: list[int] = []
    pending = client.start()
    for _ in range(10):
        for d in pending:
            server.receive_datagram(d, ADDR, NOW)
        for d, _ in server.datagrams_to_send():
            sizes.append(len(d))
            assert len(d) <= 400 - 28
            recs = records.split_records(d)
            assert sum(len(r.raw) for r in recs) == len(d)  # whole records only
            client.receive(d)
        pending = client.outgoing()
        if not pending:
            break
    assert sum(sizes) > 1000 and len(sizes) >= 4  # the certificate flight was split


@pytest.mark.unit
def test_handshake_timeout_and_idle_timeout() -> None:
    server = make_server(handshake_timeout=5.0, idle_timeout=30.0)
    # A client that stops after the cookie exchange: half-open state dropped at the timeout.
    c = Client(psk_context(b"dev1", KEY))
    server.receive_datagram(c.start()[0], ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        c.receive(d)
    server.receive_datagram(c.outgoing()[0], ADDR, NOW)  # with cookie
    server.datagrams_to_send()  # the ServerHello flight: the client never answers
    assert len(server) == 1
    server.handle_timer(NOW + 4.9)
    assert len(server) == 1
    server.handle_timer(NOW + 5.0)
    assert len(server) == 0
    assert list(server.events())[-1].cause is Cause.HANDSHAKE_TIMEOUT  # type: ignore[union-attr]
    # Established and idle.
    addr2 = ("127.0.0.1", 40002)
    handshake(server, addr2)
    list(server.events())
    server.handle_timer(NOW + 29)
    assert len(server) == 1
    # Idle sessions are swept every sweep_interval (min(5 s, idle_timeout / 4)).
    server.handle_timer(NOW + 30 + server.sweep_interval)
    assert len(server) == 0
    assert list(server.events()) == [SessionClosed(addr2, Cause.IDLE, True)]


@pytest.mark.unit
def test_max_sessions_and_per_source_rate_limit() -> None:
    server = make_server(max_sessions=3, handshake_rate=0.0)
    for i in range(3):
        assert handshake(server, ("127.0.0.1", 41000 + i)).done
    c = handshake(server, ("127.0.0.1", 41999))
    assert not c.done and len(server) == 3
    assert server.stats["refused_max_sessions"] >= 1

    limited = make_server(handshake_rate=1.0, handshake_burst=2.0)
    ok = [handshake(limited, ("10.0.0.1", 42000 + i)).done for i in range(4)]
    assert ok == [True, True, False, False]
    assert handshake(limited, ("10.0.0.2", 42100)).done  # another source is not affected
    assert limited.stats["refused_rate"] >= 2


# Not marked unit: a soak of 10,000 cycles (tens of seconds), run with the integration tests.
def test_ten_thousand_handshake_and_close_cycles_leave_memory_flat() -> None:
    server = make_server(handshake_rate=0.0)

    def cycle(i: int) -> None:
        addr = ("127.0.0.1", 10_000 + (i % 50_000))
        client = handshake(server, addr)
        assert client.done
        transfer(server, client, addr, client.close())
        list(server.events())

    for i in range(500):
        cycle(i)
    gc.collect()
    rss_base = _rss()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(500, 10_500):
            cycle(i)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(server) == 0
    assert server.stats["handshakes_completed"] == 10_500
    assert server.stats["closed:peer_closed"] == 10_500
    assert grown < 256 * 1024, grown
    # OpenSSL's own allocations are invisible to tracemalloc: the process RSS must not
    # grow by anything like a session's worth per cycle (10 KB x 10,000 = 100 MB).
    assert _rss() - rss_base < 8 * 1024 * 1024, _rss() - rss_base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.unit
@pytest.mark.parametrize(
    "cipher",
    ["PSK-AES128-CCM8", "PSK-AES128-GCM-SHA256", "PSK-AES256-GCM-SHA384", "PSK-AES128-CCM"],
)
def test_psk_suites(cipher: str) -> None:
    server = make_server()
    client = Client(psk_context(b"dev1", KEY, cipher=cipher))
    transfer(server, client, ADDR, client.start())
    assert client.done
    ev = next(server.events())
    assert isinstance(ev, HandshakeCompleted) and ev.cipher == cipher


@pytest.mark.unit
def test_dtls_1_0_and_unlisted_suites_are_refused() -> None:
    from OpenSSL import SSL

    server = make_server()
    ctx = psk_context(b"dev1", KEY)
    ctx.set_max_proto_version(0xFEFF)  # DTLS 1.0
    ctx.set_min_proto_version(0xFEFF)
    client = Client(ctx)
    transfer(server, client, ADDR, client.start())
    assert not client.done and len(server) == 0
    weak = Client(psk_context(b"dev1", KEY, cipher="PSK-AES128-CBC-SHA"))
    transfer(server, weak, ("127.0.0.1", 40009), weak.start())
    assert not weak.done and len(server) == 0
    assert SSL  # the refusals came from OpenSSL's own checks


@pytest.mark.unit
def test_lost_flight_is_retransmitted_by_the_timer() -> None:
    import time

    server = make_server()
    client = Client(psk_context(b"dev1", KEY))
    server.receive_datagram(client.start()[0], ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    server.receive_datagram(client.outgoing()[0], ADDR, NOW)
    lost = server.datagrams_to_send()  # the ServerHello flight never arrives
    assert lost
    retransmitted: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(60):  # OpenSSL's DTLS timer runs on the real clock (1 s): bounded wait
        server.handle_timer(NOW + 0.5)
        retransmitted = server.datagrams_to_send()
        if retransmitted:
            break
        time.sleep(0.05)

    def fragments(out: list[tuple[bytes, tuple[str, int]]]) -> list[bytes]:
        return [r.fragment for d, _ in out for r in records.split_records(d)]

    # The same handshake messages, in new records (new record sequence numbers).
    assert fragments(retransmitted) == fragments(lost)
    for d, _ in retransmitted:
        client.receive(d)
    transfer(server, client, ADDR, client.outgoing())
    assert client.done


@pytest.mark.unit
@pytest.mark.parametrize("detach", [True, False])
def test_a_flight_repeated_while_its_credential_is_looked_up(detach: bool) -> None:
    """The client retransmits its ClientKeyExchange/Finished flight while the PSK lookup
    is slow (Redis under load): both copies are held; the first completes the handshake,
    the second is a retransmission on an established session (it once reached OpenSSL's
    handshake path after the SSL object was freed: AssertionError, seen in bench.scale)."""
    cache = FakeCache()
    cache.unknown_to_cache.add("dev1")
    server = make_server(cache, detach_openssl=detach)
    client = Client(psk_context(b"dev1", KEY))
    pending, flight = client.start(), []
    for _ in range(30):  # bounded
        for d in pending:
            server.receive_datagram(d, ADDR, NOW)
        for d, _ in server.datagrams_to_send():
            client.receive(d)
        flight, pending = pending, client.outgoing()
        if not pending:
            break
    (ev,) = list(server.events())
    assert isinstance(ev, CredentialNeeded)
    for d in flight:  # the retransmission, held too
        server.receive_datagram(d, ADDR, NOW)
    cache.unknown_to_cache.clear()
    server.credential_resolved(ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    assert client.done
    assert [type(e) for e in server.events()] == [HandshakeCompleted]
    request = client.send(b"after")
    for d in request:
        server.receive_datagram(d, ADDR, NOW)
    assert list(server.events()) == [ApplicationData(ADDR, b"after")]
