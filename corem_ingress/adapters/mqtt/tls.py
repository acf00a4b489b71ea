"""TLS for the MQTT listener: the server context and a memory-BIO session per connection.

We do not use asyncio's TLS layer: on Python 3.11 it allocates a 256 KiB read buffer
per connection (``asyncio.sslproto.SSLProtocol.max_size``). Instead each connection is
a pyOpenSSL ``Connection`` over memory BIOs with ``SSL_MODE_RELEASE_BUFFERS`` (OpenSSL
frees its record buffers while a connection is idle), fed from one shared read buffer.

Trust: the device certificate must chain to a configured CA bundle, or (only when
``allow_self_signed``) be a self-signed leaf; in every case the adapter then requires
its fingerprint to resolve to an active registration, and the verified chain
(``peer_chain``) to end in one of that tenant's CAs (``core/trust.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto

from corem_ingress.adapters.dtls import _binding
from corem_ingress.config import ConfigError, MqttConfig
from corem_ingress.core.trust import PeerChain

#: TLS 1.2 suites: forward secrecy and AEAD only.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: the leaf is self-signed (no CA involved).
_DEPTH_ZERO_SELF_SIGNED = 18
_READ_CHUNK = 16 * 1024
#: One plaintext read buffer for every connection: each read is consumed at once.
_PLAIN = bytearray(_READ_CHUNK)
_PLAIN_VIEW = memoryview(_PLAIN)


class TlsError(Exception):
    """The handshake or a record failed; the connection must be dropped."""


def _accept_self_signed_leaf(
    _conn: SSL.Connection, _cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    # Only a self-signed *leaf* is let through; its fingerprint must still be registered.
    return bool(ok) or (depth == 0 and errnum == _DEPTH_ZERO_SELF_SIGNED)


def server_context(cfg: MqttConfig) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(TLS12_CIPHERS.encode())
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode())
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_TICKET
    )
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # No resumption: every connection presents and proves its certificate.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    with _naming("mqtt.server_cert", cfg.server_cert):
        ctx.use_certificate_chain_file(cfg.server_cert)
    with _naming("mqtt.server_key", cfg.server_key):
        ctx.use_privatekey_file(cfg.server_key)
        ctx.check_privatekey()
    for ca_file in cfg.client_ca_files:
        with _naming("mqtt.client_ca_files", ca_file):
            ctx.load_verify_locations(ca_file)
            for cert in _load_pem_certs(Path(ca_file)):
                ctx.add_client_ca(cert)
    mode = SSL.VERIFY_PEER
    if cfg.client_auth == "required":
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    callback = _accept_self_signed_leaf if cfg.allow_self_signed else None
    ctx.set_verify(mode, callback)
    ctx.set_verify_depth(cfg.verify_depth)
    return ctx


@contextlib.contextmanager
def _naming(key: str, path: str) -> Iterator[None]:
    """Turn a file or OpenSSL error into a ConfigError that names the key and the file."""
    try:
        yield
    except (OSError, ValueError, SSL.Error) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"config: {key}: cannot load {path}: {detail}") from None


def _load_pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


class TlsSession:
    """Server side of one TLS connection over memory BIOs. Bytes in, plaintext out."""

    __slots__ = ("_bios_renewed", "_conn", "closed", "handshake_done")

    def __init__(self, ctx: SSL.Context) -> None:
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_accept_state()
        self.handshake_done = False
        self.closed = False
        #: The handshake's grown memory BIOs were swapped for empty ones (2-5 KB less).
        self._bios_renewed = False

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; returns the plaintext now available (may be empty)."""
        conn = self._conn
        try:
            conn.bio_write(data)
            if not self.handshake_done:
                try:
                    conn.do_handshake()
                except SSL.WantReadError:
                    return b""
                self.handshake_done = True
            chunks: list[bytes] = []
            while True:
                try:
                    n = conn.recv_into(_PLAIN_VIEW)
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    self.closed = True
                    break
                if n <= 0:
                    break
                chunks.append(bytes(_PLAIN_VIEW[:n]))
        except SSL.Error as exc:
            raise TlsError(_describe(exc)) from None
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def send(self, plaintext: bytes) -> None:
        view = memoryview(plaintext)
        try:
            while view:
                n = self._conn.send(view[:_READ_CHUNK])
                view = view[n:]
        except SSL.Error as exc:
            raise TlsError(_describe(exc)) from None

    def outgoing(self) -> bytes:
        """Ciphertext ready for the socket."""
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._conn.bio_read(65536))
            except SSL.WantReadError:
                break
        if self.handshake_done and not self._bios_renewed:
            # Both BIOs are drained here unless the peer's next records are already in.
            self._bios_renewed = _binding.renew_memory_bios(self._conn)
        return b"".join(chunks)

    def close_notify(self) -> None:
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    def peer_fingerprint(self) -> str | None:
        """SHA-256 (lower-case hex) of the verified leaf's DER, or None without a cert."""
        cert = self._conn.get_peer_certificate(as_cryptography=False)
        if cert is None:
            return None
        return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).hexdigest()

    def peer_certificate_der(self) -> bytes | None:
        """The client certificate (DER), for just-in-time provisioning of an unknown one."""
        cert = self._conn.get_peer_certificate(as_cryptography=False)
        return None if cert is None else crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)

    def peer_chain(self) -> PeerChain | None:
        """The chain OpenSSL verified (leaf first), or None without a client certificate."""
        chain = self._conn.get_verified_chain()
        if not chain:
            if self._conn.get_peer_certificate(as_cryptography=False) is None:
                return None
            return PeerChain(())  # a self-signed leaf let through by the verify callback
        return PeerChain.from_ders(
            [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain]
        )


def _describe(exc: SSL.Error) -> str:
    try:
        parts = [str(item[2]) for item in exc.args[0] if len(item) >= 3]
    except (IndexError, TypeError):
        parts = []
    return ", ".join(parts) or exc.__class__.__name__
