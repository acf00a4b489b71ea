"""CoapConfig: the added keys, from env, validated with errors naming the key."""

from __future__ import annotations

import pytest

from corem_ingress.config import CoapConfig, ConfigError, load

pytestmark = pytest.mark.unit


def test_env_overrides_reach_the_coap_keys() -> None:
    cfg = load(
        None,
        {
            "COREM_COAP_MTU": "1400",
            "COREM_COAP_MAX_SESSIONS": "5",
            "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
            "COREM_COAP_BLOCK_SIZE": "1024",
        },
    )
    assert (cfg.coap.mtu, cfg.coap.max_sessions, cfg.coap.block_size) == (1400, 5, 1024)
    cfg.coap.validate()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mtu", 100),
        ("handshake_timeout_s", 0),
        ("idle_timeout_s", -1),
        ("max_sessions", 0),
        ("handshake_rate_per_s", -1),
        ("handshake_burst", 0),
        ("ack_timeout_s", 0),
        ("max_retransmit", 11),
        ("max_body_bytes", 0),
        ("block_size", 100),
        ("unavailable_max_age_s", -1),
        ("port", 70000),
    ],
)
def test_bad_values_name_the_key(key: str, value: object) -> None:
    cfg = CoapConfig()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=rf"coap\.{key}\b"):
        cfg.validate()


def test_block_size_must_fit_the_mtu() -> None:
    cfg = CoapConfig(mtu=600, block_size=512)
    with pytest.raises(ConfigError, match=r"coap\.block_size"):
        cfg.validate()
