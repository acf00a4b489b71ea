"""Fails loudly if the private pyOpenSSL/cryptography API the DTLS server needs goes away."""

from __future__ import annotations

import pytest
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from corem_ingress.adapters.dtls import _binding

pytestmark = pytest.mark.unit


def test_every_private_symbol_is_there() -> None:
    for name in _binding.REQUIRED_SYMBOLS:
        assert hasattr(Binding.lib, name), f"cryptography binding lost {name}: re-pin or port"
    assert Binding.lib.Cryptography_HAS_PSK
    assert hasattr(SSL.Connection, "_reverse_mapping")
    _binding.check_binding()


def test_callback_signatures_are_what_we_declare() -> None:
    ffi = Binding.ffi
    assert "unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)" in str(
        ffi.typeof(Binding.lib.SSL_CTX_set_psk_server_callback)
    )
    assert (
        "unsigned int(*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)"
        in str(ffi.typeof(Binding.lib.SSL_CTX_set_psk_client_callback))
    )


def test_public_dtls_api_used_is_there() -> None:
    for name in (
        "DTLSv1_listen",
        "DTLSv1_get_timeout",
        "DTLSv1_handle_timeout",
        "bio_read",
        "bio_write",
    ):
        assert hasattr(SSL.Connection, name)
    for name in ("set_cookie_generate_callback", "set_cookie_verify_callback"):
        assert hasattr(SSL.Context, name)
    assert SSL.DTLS_SERVER_METHOD and SSL.OP_NO_QUERY_MTU


def test_check_binding_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _binding, "REQUIRED_SYMBOLS", (*_binding.REQUIRED_SYMBOLS, "SSL_no_such_fn")
    )
    with pytest.raises(RuntimeError, match="SSL_no_such_fn"):
        _binding.check_binding()


def test_only_the_binding_module_touches_private_api() -> None:
    import pathlib

    import corem_ingress

    root = pathlib.Path(corem_ingress.__file__).parent / "adapters"
    mine = [*(root / "dtls").rglob("*.py"), *(root / "coap").rglob("*.py")]
    offenders = [
        str(p.relative_to(root))
        for p in mine
        if p.name != "_binding.py"
        and any(
            s in p.read_text() for s in ("bindings.openssl", "._lib", "._ffi", "_reverse_mapping")
        )
    ]
    assert offenders == []
