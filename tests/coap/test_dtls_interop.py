"""Issue 11.1 and 11.3 with real clients.

* coap-client-openssl with device certificates of DER sizes from 300 to 1,200 bytes: some
  sizes make it cut its Finished in two datagrams (the broker took that for a wrong key);
  every one must connect. ``COREM_CERT_SIZE_SWEEP=all`` runs every size (about 90 s).
* A device that rebooted mid-handshake and comes back from the same address and port
  (RFC 6347 4.2.8): coap-client-openssl (``-p``), ``openssl s_client -bind`` and Wakaama
  (``-l``) connect at once, and a restarted client replaces its old established session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.dtls_client import Client, psk_context
from corem_ingress.store.registry import Registry
from tests.coap.conftest import (
    CertSet,
    cert_args,
    coap_listener,
    coap_port,
    provision_cert,
    provision_psk,
    psk_args,
    read_uplinks,
    run_client,
    url,
)
from tests.coap.dtls_peers import free_udp_port
from tests.coap.sized_certs import issue_sized, short_ca
from tests.peers import peer

#: Every 50 bytes, and every byte of the window where this client (libcoap 4.3, OpenSSL,
#: a leaf from the short-named CA) cuts its Finished in two: found by sweeping every size.
CERT_SIZES = sorted({*range(300, 1201, 50), *range(905, 931)})


async def test_coap_client_with_certificates_of_every_size(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet
) -> None:
    ca = short_ca()
    ca.write(certs.dir / "short-ca.pem", certs.dir / "short-ca.key")
    node = await coap_node(client_ca_files=[str(certs.dir / "short-ca.pem")])
    server = coap_listener(node).dtls_server
    sizes = CERT_SIZES if os.environ.get("COREM_CERT_SIZE_SWEEP") != "all" else range(300, 1201)
    failed: list[tuple[int, str]] = []
    for size in sizes:
        leaf = issue_sized(ca, size)
        cert, key = certs.dir / f"leaf-{size}.pem", certs.dir / f"leaf-{size}.key"
        leaf.write(cert, key)
        await provision_cert(registry, leaf, ca=ca)
        done = server.stats["handshakes_completed"]
        args = ["-m", "post", "-B", "5", *cert_args(cert, key, certs.ca_pem), "-e", str(size)]
        res = await run_client([*args, url(coap_port(node), "up/event")])
        if server.stats["handshakes_completed"] != done + 1:
            failed.append((size, res.stderr[-300:]))
    assert failed == []
    assert len(await read_uplinks(redis, "acme")) == len(sizes)
    assert server.stats["closed:wrong_key"] == 0
    # The window really made the client split its Finished (else this proves nothing).
    assert server.stats["client_finished_split"] >= 5, dict(server.stats)


async def _reboot_mid_handshake(node: Any, ident: str, key: bytes) -> int:
    """A device that got as far as the ClientHello with the cookie, then rebooted: -> its
    local port, at which the broker now holds a stale half-done handshake."""
    loop = asyncio.get_running_loop()
    local = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", local))
        sock.connect(("127.0.0.1", coap_port(node)))
        sock.setblocking(False)
        client = Client(psk_context(ident.encode(), key))
        sock.send(client.start()[0])
        client.receive(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
        sock.send(client.outgoing()[0])
        await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)  # the server's flight
    # The device is gone; the new process binds the same port.
    assert coap_listener(node).dtls_server.pending_handshakes == 1
    return local


async def test_coap_client_back_on_the_port_of_a_stale_handshake(
    coap_node: Any, registry: Any, redis: Any
) -> None:
    node = await coap_node()
    _dev, ident, key = await provision_psk(registry)
    local = await _reboot_mid_handshake(node, ident, key)
    t0 = time.monotonic()
    args = ["-p", str(local), "-m", "post", "-B", "5", *psk_args(ident, key), "-e", "back"]
    res = await run_client([*args, url(coap_port(node), "up/event")])
    assert "WARN" not in res.stderr, res.stderr
    assert time.monotonic() - t0 < 3.0  # at once, not after the stale one times out
    (entry,) = await read_uplinks(redis, "acme")
    assert entry["payload"] == '"back"'
    assert coap_listener(node).dtls_server.stats["closed:replaced"] == 1


async def test_clients_back_on_the_port_of_a_stale_handshake(
    coap_node: Any, redis: Any, keys: Any, keyring: Any, registry: Any, tmp_path: Path
) -> None:
    """openssl s_client (-bind) and Wakaama (-l) from the port of a stale handshake."""
    node = await coap_node()
    port = coap_port(node)
    _dev, ident, key = await provision_psk(registry)
    local = await _reboot_mid_handshake(node, ident, key)
    argv = ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}"]
    argv += ["-bind", f"127.0.0.1:{local}", "-psk", key.hex(), "-psk_identity", ident]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert b"Cipher is PSK" in out, out.decode(errors="replace")[-800:]
    assert time.monotonic() - t0 < 3.0
    # Wakaama (tinydtls), 16-byte PSK, registering from the port of a stale handshake.
    reg16 = Registry(
        redis, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=600, psk_min_bytes=16
    )
    tiny_key = secrets.token_urlsafe(12).encode()  # 16 random bytes: tinydtls holds no more
    await reg16.provision(
        "acme",
        "wk-1",
        CredentialKind.PSK,
        actor="test",
        psk_identity="acme:wk-1",
        psk_bytes=tiny_key,
    )
    local = await _reboot_mid_handshake(node, "acme:wk-1", tiny_key)
    argv = ["stdbuf", "-oL", peer("lwm2mclient_tinydtls"), "-4", "-h", "127.0.0.1"]
    argv += ["-p", str(port), "-l", str(local), "-n", "wk-1", "-i", "acme:wk-1"]
    argv += ["-s", tiny_key.hex(), "-t", "60"]
    t0 = time.monotonic()
    wk = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert wk.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(10):
            while b"STATE_READY" not in seen:
                chunk = await wk.stdout.read(4096)
                assert chunk, seen.decode(errors="replace")[-800:]
                seen += chunk
    finally:
        with contextlib.suppress(ProcessLookupError):
            wk.kill()
        await wk.wait()
    assert time.monotonic() - t0 < 3.0


async def test_a_restarted_client_replaces_its_established_session(
    coap_node: Any, registry: Any, redis: Any
) -> None:
    """coap-client observing /down is killed (the device reboots) and starts again on the
    same port: its new handshake replaces the old session once complete."""
    node = await coap_node()
    server = coap_listener(node).dtls_server
    _dev, ident, key = await provision_psk(registry)
    local = free_udp_port()
    argv = ["coap-client-openssl", "-p", str(local), "-s", "30", *psk_args(ident, key)]
    argv.append(url(coap_port(node), "down"))
    observer = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(250):  # bounded: 5 s
            if ("127.0.0.1", local) in server.established():
                break
            await asyncio.sleep(0.02)
        assert ("127.0.0.1", local) in server.established()
    finally:
        observer.kill()  # no close_notify: the broker still holds the session
        await observer.wait()
    args = ["-p", str(local), "-m", "post", "-B", "5", *psk_args(ident, key), "-e", "again"]
    res = await run_client([*args, url(coap_port(node), "up/event")])
    assert "WARN" not in res.stderr, res.stderr
    (entry,) = await read_uplinks(redis, "acme")
    assert entry["payload"] == '"again"'
    assert server.stats["closed:" + Cause.REPLACED.label] == 1


async def _handshake_from(port: int, local: int, ident: str, key: bytes) -> Client:
    """A full PSK handshake from ``local`` (socket closed after it, no close_notify)."""
    loop = asyncio.get_running_loop()
    client = Client(psk_context(ident.encode(), key))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", local))
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        for d in client.start():
            sock.send(d)
        async with asyncio.timeout(10):
            while not (client.done or client.failed):
                client.receive(await loop.sock_recv(sock, 65536))
                for d in client.outgoing():
                    sock.send(d)
    return client


async def test_a_failed_new_connection_leaves_the_session_at_its_address_alone(
    coap_node: Any, registry: Any
) -> None:
    """A new handshake from the address of a live session that fails (here a wrong key)
    must not end that session, nor free its tenant slot or its live-session entry."""
    node = await coap_node()
    listener = coap_listener(node)
    _dev, ident, key = await provision_psk(registry)
    local = free_udp_port()
    addr = ("127.0.0.1", local)
    assert (await _handshake_from(coap_port(node), local, ident, key)).done
    assert addr in listener.sessions and len(node.services.sessions) == 1
    wrong = await _handshake_from(coap_port(node), local, ident, b"w" * len(key))
    assert wrong.failed is not None and "decrypt error" in str(wrong.failed)
    assert listener.dtls_server.stats["closed:wrong_key"] == 1
    assert addr in listener.dtls_server.established()
    assert addr in listener.sessions and len(node.services.sessions) == 1
