from pathlib import Path

import pytest

from corem_ingress import config
from corem_ingress.core.psk import generate_kek_line

pytestmark = pytest.mark.unit


def test_defaults_validate() -> None:
    cfg = config.load(None, environ={})
    assert cfg.redis.url == ""
    assert (cfg.http.port, cfg.mqtt.port, cfg.coap.port, cfg.health.port) == (
        8080,
        8883,
        5684,
        9100,
    )
    assert cfg.node_id


def test_repo_configs_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for name in ("dev.yaml", "production.example.yaml"):
        cfg = config.load(root / "configs" / name, environ={})
        assert cfg.health.port == 9100


def test_env_overrides_every_leaf(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("redis:\n  url: redis://127.0.0.1:1/0\nhttp:\n  port: 1000\n")
    cfg = config.load(
        f,
        environ={
            "COREM_REDIS_URL": "redis://127.0.0.1:2/0",
            "COREM_RESOLVER_CACHE_TTL_S": "5",
            "COREM_MQTT_CLIENT_CA_FILES": "a.pem, b.pem",
            "COREM_HTTP_ENABLED": "false",
        },
    )
    assert cfg.redis.url == "redis://127.0.0.1:2/0"
    assert cfg.http.port == 1000
    assert cfg.resolver.cache_ttl_s == 5.0
    assert cfg.mqtt.client_ca_files == ["a.pem", "b.pem"]
    assert cfg.http.enabled is False
    assert "COREM_CREDENTIALS_API_KEY_OVERLAP_S" in config.env_names()


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("http:\n  port: abc\n", {}, "http.port: expected int"),
        ("http:\n  prot: 1\n", {}, "http.prot: unknown key"),
        ("nope: 1\n", {}, "nope: unknown key"),
        ("health: 3\n", {}, "health: expected a mapping"),
        ("", {"COREM_HEALTH_PORT": "70000"}, "health.port"),
        ("", {"COREM_HEALTH_PORT": "x"}, "COREM_HEALTH_PORT"),
        ("", {"COREM_REDIS_URL": "http://x"}, "redis.url"),
        ("", {"COREM_LOGGING_FORMAT": "xml"}, "logging.format"),
        ("", {"COREM_HTTP_ENABLED": "maybe"}, "http.enabled"),
        (
            "credentials:\n  api_key_overlap_s: 10\n  api_key_overlap_max_s: 5\n",
            {},
            "api_key_overlap_max_s",
        ),
        ("a: [\n", {}, "not valid YAML"),
        ("mqtt:\n  proxy_protocol: yes-please\n", {}, "mqtt.proxy_protocol"),
        ("http:\n  proxy_protocol: required\n", {}, "needs proxy.trusted_cidrs"),
        ("http:\n  trust_forwarded_for: true\n", {}, "http.trust_forwarded_for"),
        ("proxy:\n  trusted_cidrs: [10.0.0.0/8, nope]\n", {}, "proxy.trusted_cidrs: entry 2"),
        ("http:\n  tls_cert: a.pem\n", {}, "http.tls_cert"),
        ("", {"COREM_REDIS_URL_FILE": "/nonexistent/url"}, "redis.url_file: cannot read"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, yaml_text: str, env: dict[str, str], needle: str
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(config.ConfigError) as e:
        config.load(f, environ=env)
    assert needle in str(e.value)


def test_missing_file() -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load("/nonexistent/x.yaml", environ={})


def test_keyring_from_env_or_file_never_yaml(tmp_path: Path) -> None:
    line = generate_kek_line("k1")
    cfg = config.load(None, environ={})
    assert cfg.load_keyring({}) is None
    ring = cfg.load_keyring({"COREM_PSK_KEK": line})
    assert ring is not None and ring.active_kid == "k1"
    f = tmp_path / "kek"
    f.write_text(line + "\n")
    ring = cfg.load_keyring({"COREM_PSK_KEK_FILE": str(f)})
    assert ring is not None and ring.active_kid == "k1"
    cfg.credentials.psk_kek_file = str(f)
    assert cfg.load_keyring({}) is not None
    # The key itself has no place in the YAML schema.
    y = tmp_path / "c.yaml"
    y.write_text("credentials:\n  psk_kek: " + line.split(":")[1] + "\n")
    with pytest.raises(config.ConfigError, match="unknown key"):
        config.load(y, environ={})


def test_bad_keyring_error_does_not_echo_the_key() -> None:
    secret = "k1:" + "A" * 20
    cfg = config.load(None, environ={})
    with pytest.raises(config.ConfigError) as e:
        cfg.load_keyring({"COREM_PSK_KEK": secret})
    assert "AAAA" not in str(e.value)


def test_redis_url_from_a_secret_file(tmp_path: Path) -> None:
    secret = "s3cr3t-password"
    url_file = tmp_path / "url"
    url_file.write_text(f"\n redis://corem:{secret}@127.0.0.1:6379/0 \n")
    cfg = config.load(None, environ={"COREM_REDIS_URL_FILE": str(url_file)})
    assert cfg.redis.url == f"redis://corem:{secret}@127.0.0.1:6379/0"
    url_file.write_text(f"http://corem:{secret}@x\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(None, environ={"COREM_REDIS_URL_FILE": str(url_file)})
    assert "redis.url" in str(err.value) and secret not in str(err.value)
    url_file.write_text("\n")
    with pytest.raises(config.ConfigError, match="empty"):
        config.load(None, environ={"COREM_REDIS_URL_FILE": str(url_file)})


def test_reuse_port_off_by_default_and_refused_where_the_platform_lacks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert config.load(None, environ={}).reuse_port is False
    assert config.load(None, environ={"COREM_REUSE_PORT": "true"}).reuse_port is True
    monkeypatch.delattr(config.socket, "SO_REUSEPORT")
    assert config.load(None, environ={}).reuse_port is False  # off: nothing to check
    with pytest.raises(config.ConfigError, match="reuse_port: needs SO_REUSEPORT"):
        config.load(None, environ={"COREM_REUSE_PORT": "true"})
