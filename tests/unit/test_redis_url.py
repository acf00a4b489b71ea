"""Redis URL parsing (single server, Sentinel, Cluster) and the limits section: no I/O."""

import pytest

from corem_ingress.config import Config, ConfigError, load
from corem_ingress.store.connection import CLUSTER, SENTINEL, parse_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://r.example:6380", "unix:///run/redis.sock"]
)
def test_plain_urls_are_left_to_redis_py(url: str) -> None:
    t = parse_url(url)
    assert t.url == url and t.hosts == ()


def test_sentinel_url() -> None:
    t = parse_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/mymaster/2")
    assert t.scheme == SENTINEL
    assert t.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert t.service_name == "mymaster" and t.db == 2
    assert t.password == "s3cret" and t.username is None
    t = parse_url("redis+sentinel://h:1/svc?sentinel_password=x")
    assert t.db == 0 and t.sentinel_password == "x"


def test_cluster_url() -> None:
    t = parse_url("redis+cluster://user:pw@a:7000,b:7001,[::1]:7002")
    assert t.scheme == CLUSTER
    assert t.hosts == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert t.username == "user" and t.password == "pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",  # no service name
        "redis+sentinel://h:26379/svc/x",  # db not a number
        "redis+sentinel:///svc",  # no host
        "redis+cluster://h:7000/0",  # a cluster has no db
        "redis+cluster://h",  # no port
        "redis+cluster://h:99999",
        "memcached://h:1",
        "h:6379",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_config_accepts_sentinel_and_cluster_urls() -> None:
    for url in ("redis+sentinel://127.0.0.1:26379/corem", "redis+cluster://127.0.0.1:7000"):
        cfg = load(None, {"COREM_REDIS_URL": url})
        assert cfg.redis.url == url


def test_config_error_names_the_key_not_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"COREM_REDIS_URL": "redis+sentinel://:topsecret@h:1"})
    assert "redis.url" in str(err.value) and "topsecret" not in str(err.value)


def test_limits_section_defaults_env_and_validation() -> None:
    cfg = Config()
    assert cfg.limits.auth_fail_max == 10 and cfg.limits.per_tenant_max_connections == 0
    cfg = load(
        None,
        {
            "COREM_LIMITS_AUTH_FAIL_MAX": "5",
            "COREM_LIMITS_AUTH_BLOCK_S": "30",
            "COREM_LIMITS_PER_DEVICE_MSGS_PER_S": "2.5",
        },
    )
    assert cfg.limits.auth_fail_max == 5
    assert cfg.limits.auth_block_s == 30.0
    assert cfg.limits.per_device_msgs_per_s == 2.5
    with pytest.raises(ConfigError, match=r"limits\.auth_fail_window_s"):
        load(None, {"COREM_LIMITS_AUTH_FAIL_WINDOW_S": "0"})
    with pytest.raises(ConfigError, match=r"limits\.per_device_burst"):
        load(None, {"COREM_LIMITS_PER_DEVICE_BURST": "0"})
