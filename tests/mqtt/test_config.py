"""MqttConfig validation and TLS-context errors name the key."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.mqtt import tls
from corem_ingress.config import ConfigError, MqttConfig, load

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("client_auth", "none"),
        ("max_packet_size", 10),
        ("connect_timeout_s", 0),
        ("max_keepalive_s", 0),
        ("max_inflight", 0),
        ("verify_depth", 0),
        ("client_ca_files", []),
    ],
)
def test_bad_values_name_the_key(key: str, value: object) -> None:
    cfg = MqttConfig()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=f"mqtt.{key}"):
        cfg.validate()


def test_env_overrides_reach_the_new_keys() -> None:
    cfg = load(
        None,
        {"COREM_MQTT_MAX_INFLIGHT": "32", "COREM_MQTT_ALLOW_SELF_SIGNED": "true"},
    )
    assert cfg.mqtt.max_inflight == 32 and cfg.mqtt.allow_self_signed
    cfg.mqtt.validate()


def test_unreadable_files_name_the_key(tmp_path, pki) -> None:  # type: ignore[no-untyped-def]
    cfg = MqttConfig(
        server_cert=str(pki.server_cert),
        server_key=str(pki.server_key),
        client_ca_files=[str(pki.ca_file)],
    )
    tls.server_context(cfg)  # loads
    for key, attr, value in (
        ("mqtt.server_cert", "server_cert", str(tmp_path / "missing.pem")),
        ("mqtt.server_key", "server_key", str(pki.ca_file)),  # not a key
        ("mqtt.client_ca_files", "client_ca_files", [str(tmp_path / "none.pem")]),
    ):
        bad = MqttConfig(**{**cfg.__dict__, attr: value})
        with pytest.raises(ConfigError, match=key):
            tls.server_context(bad)
