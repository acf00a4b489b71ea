"""The per-session idle deadline the LwM2M server extends (issue 11.11): a registered
device's DTLS session is not closed as idle before its registration ends. Sans-I/O."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.dtls.events import SessionClosed
from tests.coap.test_dtls_core import ADDR, NOW, handshake, make_server

pytestmark = pytest.mark.unit


def test_keep_alive_overrides_the_idle_timeout_until_its_deadline() -> None:
    server = make_server(idle_timeout=20.0)
    handshake(server, ADDR)
    list(server.events())
    assert server.keep_alive(ADDR, NOW + 120)  # e.g. lifetime 90 s + grace 30 s
    server.handle_timer(NOW + 32 + server.sweep_interval)  # 32 s silent: past the idle timeout
    assert len(server) == 1 and list(server.events()) == []
    server.handle_timer(NOW + 120 + server.sweep_interval)
    assert len(server) == 0
    assert list(server.events()) == [SessionClosed(ADDR, "idle", True)]


def test_keep_alive_zero_gives_the_session_back_to_the_idle_timeout() -> None:
    server = make_server(idle_timeout=20.0)
    handshake(server, ADDR)
    list(server.events())
    server.keep_alive(ADDR, NOW + 1000)
    server.keep_alive(ADDR, 0.0)
    server.handle_timer(NOW + 20 + server.sweep_interval)
    assert len(server) == 0
    assert not server.keep_alive(ADDR, NOW + 1000)  # no such session any more
