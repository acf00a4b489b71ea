"""deploy/nginx.conf passes ``nginx -t`` (hosts and ports rewritten for loopback only)."""

from pathlib import Path

from tests.ops.nginx import addresses, check, render


def test_shipped_load_balancer_config_passes_nginx_t(tmp_path: Path) -> None:
    backends, listens = addresses({"broker-a": {}, "broker-b": {}})
    text = render(backends, listens, tmp_path)
    # Only addresses changed: the balancing directives are the shipped ones.
    assert text.count("hash $remote_addr consistent;") == 3
    assert "udp;" in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = check(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
