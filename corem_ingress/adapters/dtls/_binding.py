"""Every use of non-public pyOpenSSL / cryptography API in the broker lives here.

pyOpenSSL has no PSK server callback and no way to set a DTLS link MTU on a
memory-BIO connection, so we reach into cryptography's cffi binding
(``cryptography.hazmat.bindings.openssl.binding``) and into pyOpenSSL's
``Connection._reverse_mapping`` (SSL* -> Connection) for these three things:

* ``SSL_CTX_set_psk_server_callback`` (server side, PSK cipher suites);
* ``SSL_CTX_set_psk_client_callback`` (the in-process test/bench client only);
* ``SSL_set_mtu`` (whole DTLS records within the configured MTU);
* ``SSL_session_reused`` (the resumption bench: did a handshake resume?);
* ``SSL_CTX_add_server_custom_ext`` (the RFC 9146 ``connection_id`` extension, which
  OpenSSL does not implement: we parse the client's and answer in the ServerHello);
* ``SSL_set_bio`` with pyOpenSSL's ``Connection._into_ssl``/``_from_ssl`` (fresh memory
  BIOs once a TLS handshake is over: ``renew_memory_bios``, used by the MQTT listener).

Version ranges are pinned in pyproject.toml (``cryptography>=45,<51``,
``pyOpenSSL>=25,<27``); ``tests/coap/test_binding.py`` fails loudly when any of
these symbols disappears. Nothing else in the package imports ``_lib``/``_ffi``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

_ffi: Any = Binding.ffi
_lib: Any = Binding.lib

#: Wire version of DTLS 1.2 (for set_min/max_proto_version).
DTLS1_2_VERSION = 0xFEFD

#: Names this module needs from the binding; the binding test checks each one.
REQUIRED_SYMBOLS = (
    "SSL_CTX_set_psk_server_callback",
    "SSL_CTX_set_psk_client_callback",
    "SSL_CTX_use_psk_identity_hint",
    "SSL_set_mtu",
    "SSL_OP_NO_QUERY_MTU",
    "DTLSv1_listen",
    "Cryptography_HAS_PSK",
    "SSL_CTX_add_server_custom_ext",
    "SSL_CTX_add_client_custom_ext",
    "Cryptography_HAS_CUSTOM_EXT",
    "SSL_session_reused",
    "SSL_set_bio",
    "BIO_get_mem_data",
    "BIO_new",
    "BIO_s_mem",
    "BIO_free",
)

#: (connection, identity) -> PSK bytes, or None to refuse (handshake fails with an alert).
PskServerCallback = Callable[[SSL.Connection, bytes], bytes | None]
#: (connection, extension_data) -> accept it? (False: decode_error alert).
ExtensionParseCallback = Callable[[SSL.Connection, bytes], bool]
#: (connection) -> the extension_data for our ServerHello, or None to leave it out.
ExtensionAddCallback = Callable[[SSL.Connection], bytes | None]
#: (connection, hint) -> (identity, PSK).
PskClientCallback = Callable[[SSL.Connection, bytes], tuple[bytes, bytes]]


def check_binding() -> None:
    """Raise RuntimeError naming what is missing, if the private API is not there."""
    missing = [name for name in REQUIRED_SYMBOLS if not hasattr(_lib, name)]
    if not getattr(_lib, "Cryptography_HAS_PSK", False):
        missing.append("Cryptography_HAS_PSK (true)")
    probe = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    if not (hasattr(probe, "_into_ssl") and hasattr(probe, "_from_ssl")):
        missing.append("OpenSSL.SSL.Connection._into_ssl/_from_ssl")
    if not hasattr(SSL.Connection, "_reverse_mapping"):
        missing.append("OpenSSL.SSL.Connection._reverse_mapping")
    if missing:
        raise RuntimeError(
            "corem_ingress DTLS: the pinned cryptography/pyOpenSSL private API changed; "
            f"missing: {', '.join(missing)}"
        )


def _connection(ssl: Any) -> SSL.Connection:
    conn: SSL.Connection = SSL.Connection._reverse_mapping[ssl]
    return conn


def set_psk_server_callback(ctx: SSL.Context, callback: PskServerCallback) -> None:
    """Install the PSK lookup. Exceptions in ``callback`` refuse the handshake."""

    def wrapper(ssl: Any, identity: Any, psk_out: Any, max_len: int) -> int:
        try:
            key = callback(_connection(ssl), _ffi.string(identity))
        except Exception:
            return 0
        if not key or len(key) > max_len:
            return 0
        _ffi.memmove(psk_out, key, len(key))
        return len(key)

    handle = _ffi.callback("unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)", wrapper)
    # Keep the cffi callback alive as long as the context.
    ctx._corem_psk_server_cb = handle  # type: ignore[attr-defined]
    _lib.SSL_CTX_set_psk_server_callback(ctx._context, handle)


def set_psk_client_callback(ctx: SSL.Context, callback: PskClientCallback) -> None:
    """Client side (tests and bench only)."""

    def wrapper(
        ssl: Any, hint: Any, identity_out: Any, max_id: int, psk_out: Any, max_psk: int
    ) -> int:
        try:
            hint_b = b"" if hint == _ffi.NULL else _ffi.string(hint)
            ident, key = callback(_connection(ssl), hint_b)
        except Exception:
            return 0
        if len(ident) + 1 > max_id or len(key) > max_psk:
            return 0
        _ffi.memmove(identity_out, ident + b"\0", len(ident) + 1)
        _ffi.memmove(psk_out, key, len(key))
        return len(key)

    handle = _ffi.callback(
        "unsigned int(*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)",
        wrapper,
    )
    ctx._corem_psk_client_cb = handle  # type: ignore[attr-defined]
    _lib.SSL_CTX_set_psk_client_callback(ctx._context, handle)


def session_reused(conn: SSL.Connection) -> bool:
    """Did this handshake resume a session (abbreviated handshake)? pyOpenSSL has no
    ``session_reused``; used by ``bench/dtls_resumption.py``."""
    return bool(_lib.SSL_session_reused(conn._ssl))


def set_mtu(conn: SSL.Connection, mtu: int) -> None:
    """Link MTU for a memory-BIO DTLS connection (context needs OP_NO_QUERY_MTU)."""
    _lib.SSL_set_mtu(conn._ssl, mtu)


def renew_memory_bios(conn: SSL.Connection) -> bool:
    """Give a memory-BIO connection two fresh, empty BIOs; the old ones are freed.

    A memory BIO keeps the capacity its largest write grew it to (the handshake flights:
    2-5 KB per connection, for as long as the connection lives). Done only when both are
    empty (nothing read ahead, nothing unsent); returns whether it was done."""
    into, out = conn._into_ssl, conn._from_ssl
    if into is None or out is None:
        return False
    data = _ffi.new("char **")
    if _lib.BIO_get_mem_data(into, data) or _lib.BIO_get_mem_data(out, data):
        return False
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    _lib.SSL_set_bio(conn._ssl, new_into, new_out)  # frees the old pair (the SSL owns BIOs)
    conn._into_ssl, conn._from_ssl = new_into, new_out
    return True


#: TLS alert description for a malformed extension (RFC 5246 7.2.2).
_DECODE_ERROR = 50


def add_server_extension(
    ctx: SSL.Context,
    ext_type: int,
    parse: ExtensionParseCallback,
    add: ExtensionAddCallback,
) -> None:
    """A ClientHello extension OpenSSL does not know, answered in the ServerHello.

    OpenSSL calls ``parse`` with the client's extension_data, then (only when the client
    sent it) ``add`` for ours. Exceptions in either refuse the handshake."""
    handles = _extension_handles(parse, add)
    _install(ctx, ext_type, handles, _lib.SSL_CTX_add_server_custom_ext)


#: Client-side handlers by (parse, add): one set of cffi callbacks for every context.
_client_handles: dict[tuple[Any, Any], tuple[Any, Any, Any]] = {}


def add_client_extension(
    ctx: SSL.Context,
    ext_type: int,
    parse: ExtensionParseCallback,
    add: ExtensionAddCallback,
) -> None:
    """Client side (the simulator's device): ``add`` for the ClientHello (None leaves it
    out), ``parse`` for the server's answer. Pass module-level functions: their cffi
    callbacks are made once and shared by every context (a fleet makes thousands)."""
    handles = _client_handles.get((parse, add))
    if handles is None:
        handles = _client_handles[(parse, add)] = _extension_handles(parse, add)
    _install(ctx, ext_type, handles, _lib.SSL_CTX_add_client_custom_ext)


def _install(ctx: SSL.Context, ext_type: int, handles: tuple[Any, Any, Any], register: Any) -> None:
    # Keep the cffi callbacks alive as long as the context.
    ctx._corem_ext_cbs = (*getattr(ctx, "_corem_ext_cbs", ()), handles)  # type: ignore[attr-defined]
    if not register(
        ctx._context, ext_type, handles[0], handles[1], _ffi.NULL, handles[2], _ffi.NULL
    ):
        raise RuntimeError(f"OpenSSL refused a handler for TLS extension {ext_type}")


def _extension_handles(
    parse: ExtensionParseCallback, add: ExtensionAddCallback
) -> tuple[Any, Any, Any]:
    """The cffi (add, free, parse) callbacks around ``parse`` and ``add``."""
    # extension_data buffers handed to OpenSSL, alive until its free callback.
    buffers: dict[int, Any] = {}

    def parse_cb(ssl: Any, _type: int, data: Any, length: int, alert: Any, _arg: Any) -> int:
        try:
            ok = parse(_connection(ssl), bytes(_ffi.buffer(data, length)))
        except Exception:
            ok = False
        if not ok:
            alert[0] = _DECODE_ERROR
            return 0
        return 1

    def add_cb(ssl: Any, _type: int, out: Any, outlen: Any, alert: Any, _arg: Any) -> int:
        try:
            value = add(_connection(ssl))
        except Exception:
            alert[0] = 80  # internal_error
            return -1
        if value is None:
            return 0
        buf = _ffi.new("unsigned char[]", max(1, len(value)))
        _ffi.memmove(buf, value, len(value))
        buffers[int(_ffi.cast("uintptr_t", buf))] = buf
        out[0] = buf
        outlen[0] = len(value)
        return 1

    def free_cb(_ssl: Any, _type: int, out: Any, _arg: Any) -> None:
        buffers.pop(int(_ffi.cast("uintptr_t", out)), None)

    handles = (
        _ffi.callback(
            "int(*)(SSL *, unsigned int, unsigned char * *, size_t *, int *, void *)", add_cb
        ),
        _ffi.callback("void(*)(SSL *, unsigned int, unsigned char *, void *)", free_cb),
        _ffi.callback(
            "int(*)(SSL *, unsigned int, unsigned char *, size_t, int *, void *)", parse_cb
        ),
    )
    return handles
