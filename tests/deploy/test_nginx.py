"""deploy/nginx.conf passes ``nginx -t`` (hosts and ports rewritten for loopback only)."""

from pathlib import Path

from corem_ingress.embedded_redis import free_port
from tests.ops.nginx import check, render


def test_shipped_load_balancer_config_passes_nginx_t(tmp_path: Path) -> None:
    backends = {
        f"{node}:{port}": free_port()
        for node in ("broker-a", "broker-b")
        for port in (8883, 8080, 5684)
    }
    listens = {port: free_port() for port in (8883, 8080, 5684)}
    text = render(backends, listens, tmp_path)
    # Only addresses changed: the balancing directives are the shipped ones.
    assert text.count("hash $remote_addr consistent;") == 3
    assert "udp;" in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = check(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
