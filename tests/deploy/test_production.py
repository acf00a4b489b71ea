"""deploy/ fit for production (issue 22, points 4 and 5), checked without a container engine:
no fleet lockout behind the load balancer, TLS for device HTTP, graceful rolling updates,
admin API and metrics fenced off, secrets never world-readable, Redis with a password (the
shipped ACL scheme run on a real redis-server), reproducible images."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement

from corem_ingress import config
from corem_ingress.core.access import AccessPolicy
from corem_ingress.core.causes import Cause
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.core.trusted_proxies import TrustedProxies
from corem_ingress.embedded_redis import free_port
from tests.deploy.test_manifests import (
    DEPLOY,
    ROOT,
    compose,
    configmap_config,
    container,
    deployment,
    dockerfile,
    k8s_objects,
)

NGINX_CONF = (DEPLOY / "nginx.conf").read_text()


def compose_config(tmp_path: Path) -> config.Config:
    url = tmp_path / "redis-url"
    url.write_text("redis://corem:pw@redis:6379/0\n")
    env = {**compose()["services"]["broker-a"]["environment"], "COREM_REDIS_URL_FILE": str(url)}
    path = tmp_path / "config.yaml"
    path.write_text((DEPLOY / "config.yaml").read_text())
    return config.load(path, env)


# -- issue 22.4: no fleet lockout -------------------------------------------------------------
def test_compose_config_throttles_real_clients_never_the_load_balancer(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path)
    lb_address = compose()["services"]["lb"]["networks"]["corem"]["ipv4_address"]
    assert cfg.proxy.trusted_cidrs == [f"{lb_address}/32"]
    # TCP: nginx sends PROXY protocol and the brokers require it from nginx.
    for port in (8883, 8080):
        block = re.search(r"server\s*\{\s*listen " + str(port) + r";(.*?)\}", NGINX_CONF, re.S)
        assert block is not None and "proxy_protocol on;" in block.group(1), port
    assert cfg.mqtt.proxy_protocol == cfg.http.proxy_protocol == "required"
    # The throttle is on, and keyed so that 11+ bad keys through nginx block that client only.
    assert cfg.limits.auth_fail_max > 0
    policy = AccessPolicy(
        throttle=AuthThrottle(
            max_failures=cfg.limits.auth_fail_max,
            window_s=cfg.limits.auth_fail_window_s,
            block_s=cfg.limits.auth_block_s,
        ),
        trusted_proxies=TrustedProxies(cfg.proxy.trusted_cidrs),
    )
    for i in range(cfg.limits.auth_fail_max + 5):
        policy.auth_failed(lb_address, Cause.UNKNOWN_OR_REVOKED, float(i))  # UDP via nginx
        policy.auth_failed("198.51.100.7", Cause.UNKNOWN_OR_REVOKED, float(i))
    assert policy.check_source(lb_address, 20.0) is None
    assert policy.check_source("198.51.100.7", 20.0) is not None
    # DTLS handshakes all come from nginx's address: no per-source handshake rate there,
    # and no per-source cap on handshakes in progress (only the total one).
    assert cfg.coap.handshake_rate_per_s == 0
    assert cfg.coap.max_pending_handshakes_per_source == 0
    assert cfg.coap.max_pending_handshakes >= 1


def test_k8s_config_throttles_real_clients(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    assert cfg.limits.auth_fail_max > 0
    svc = k8s_objects()[("Service", "corem-ingress-tcp")]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"  # the pod sees the client


# -- issue 22.5: TLS for device HTTP ------------------------------------------------------------
def test_device_http_is_https_in_compose_and_kubernetes(tmp_path: Path) -> None:
    for cfg in (compose_config(tmp_path), configmap_config(tmp_path)):
        assert cfg.http.tls_cert and cfg.http.tls_key
    tls_mount = "/etc/corem/tls"
    k8s = configmap_config(tmp_path)
    assert k8s.http.tls_cert.startswith(tls_mount + "/")
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert tls_mount in mounts


def test_nginx_resolver_claim_is_gone() -> None:
    """`resolver ... valid=10s` re-resolved nothing without `resolve` on the servers."""
    active = [line for line in NGINX_CONF.splitlines() if not line.strip().startswith("#")]
    assert not any(line.strip().startswith("resolver ") for line in active)
    # Names resolve at start: compose pins every broker's address.
    services = compose()["services"]
    for name in ("broker-a", "broker-b", "lb", "redis"):
        assert services[name]["networks"]["corem"]["ipv4_address"]


# -- Kubernetes: rolling updates, network policy, config -----------------------------------------
def test_prestop_delays_sigterm_within_the_grace_period() -> None:
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    wait = float(pre_stop[1])
    assert wait >= 3
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > wait + config.Config().shutdown_deadline_s


def test_network_policy_fences_admin_and_metrics() -> None:
    policy = k8s_objects()[("NetworkPolicy", "corem-ingress")]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_ports: set[tuple[int, str]] = set()
    fenced: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
        if "from" not in rule:
            open_ports |= ports
        else:
            assert rule["from"], rule  # an empty "from" would admit everyone
            for port, _proto in ports:
                fenced[port] = rule["from"]
    assert open_ports == {(8883, "TCP"), (8080, "TCP"), (5684, "UDP")}
    assert set(fenced) == {8081, 9100}
    named = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert {named["admin"], named["metrics"]} == set(fenced)


# -- secrets ------------------------------------------------------------------------------------
def test_no_world_readable_secret_instructions() -> None:
    for path in (ROOT / "docs" / "deploy.md", DEPLOY / "docker-compose.yml"):
        assert "0644" not in path.read_text(), path
    spec = deployment()["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        source = volume.get("secret") or volume.get("projected")
        if source is not None:
            assert source["defaultMode"] & 0o007 == 0, volume["name"]  # nothing for "other"
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


@pytest.fixture(scope="module")
def compose_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/compose-secrets.sh run for real (as root here, like on a deployment host)."""
    if os.geteuid() != 0:
        pytest.fail("compose-secrets.sh chowns files: run the deploy tests as root (CI does)")
    d = tmp_path_factory.mktemp("compose")
    (d / "certs").mkdir()
    (d / "certs" / "server.key").write_text("not a real key\n")
    cli = str(Path(sys.executable).with_name("corem-ingress"))
    subprocess.run(
        ["sh", str(ROOT / "scripts" / "compose-secrets.sh"), str(d)],
        check=True,
        env={**os.environ, "COREM_INGRESS": cli},
        capture_output=True,
        timeout=60,
    )
    return d


def test_compose_secrets_are_owned_by_their_reader_mode_0400(compose_secrets: Path) -> None:
    secrets = compose_secrets / "secrets"
    owners = {
        "psk-kek": 10001,
        "admin-tokens": 10001,
        "redis-url": 10001,
        "redis-acl": 999,
        "redis-tls.crt": 999,
        "redis-tls.key": 999,
    }
    for name, uid in owners.items():
        st = (secrets / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o400, name
        assert (st.st_uid, st.st_gid) == (uid, uid), name
    # The CA certificate is public (both containers read it); its key was never kept.
    assert stat.S_IMODE((secrets / "redis-ca.pem").stat().st_mode) == 0o444
    assert not any("PRIVATE KEY" in f.read_text() for f in secrets.iterdir() if f.suffix == ".pem")
    key = (compose_secrets / "certs" / "server.key").stat()
    assert stat.S_IMODE(key.st_mode) == 0o400 and key.st_uid == 10001
    # Every compose secret file is one the script writes.
    for entry in compose()["secrets"].values():
        assert Path(entry["file"]).name in {*owners, "redis-ca.pem"}


def _in_here(args: list[str], secrets: Path, port: int) -> list[str]:
    """A compose command run on this host: /run/secrets/X at the file compose mounts there,
    Redis' TLS port a free one."""
    files = {
        f"/run/secrets/{name}": str(secrets / Path(entry["file"]).name)
        for name, entry in compose()["secrets"].items()
    }
    out = [files.get(a, a) for a in args]
    for flag in ("--tls-port", "-p"):
        if flag in out:
            out[out.index(flag) + 1] = str(port)
    return out


def _start_compose_redis(secrets: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The redis service's own command from the compose file, on loopback."""
    port = free_port()
    argv = _in_here(compose()["services"]["redis"]["command"], secrets, port)
    argv[0] = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [*argv, "--bind", "127.0.0.1", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("redis-server did not start")


async def test_compose_redis_requires_tls_and_the_password(
    compose_secrets: Path, tmp_path: Path, node_on: Any
) -> None:
    """The shipped Redis on a real redis-server, started with the compose file's command and
    secrets: TLS only, no anonymous access, the health check passes and can only PING, and
    a broker node runs on the URL it reads through redis.url_file (lookups, appends and the
    revocation bus over TLS, the certificate checked against the private CA)."""
    secrets = compose_secrets / "secrets"
    proc, port = _start_compose_redis(secrets, tmp_path)
    try:
        url = (secrets / "redis-url").read_text().strip()
        assert re.fullmatch(
            r"rediss://corem:[0-9a-f]{64}@redis:6380/0\?ssl_ca_certs=/run/secrets/corem-redis-ca",
            url,
        )
        # "localhost" is in the certificate: its name is checked as for "redis" in compose.
        local = _in_here([url.replace("@redis:6380", f"@localhost:{port}")], secrets, port)[0]
        local = local.replace("/run/secrets/corem-redis-ca", str(secrets / "redis-ca.pem"))
        url_file = tmp_path / "url"
        url_file.write_text(local + "\n")
        cfg = config.load(None, {"COREM_REDIS_URL_FILE": str(url_file)})
        assert cfg.redis.url == local
        node = await node_on(cfg.redis.url)
        await node.redis.xadd("corem:uplink:{acme}", {"k": "v"})
        assert await node.redis.xlen("corem:uplink:{acme}") == 1

        health = _in_here(compose()["services"]["redis"]["healthcheck"]["test"][1:], secrets, port)
        out = subprocess.run(health, capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "PONG", out.stderr

        password = url.split(":")[2].split("@")[0]
        plain = redis.Redis(port=port, username="corem", password=password, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()  # no plaintext port: the TLS port does not speak it
        tls = {"ssl": True, "ssl_ca_certs": str(secrets / "redis-ca.pem"), "socket_timeout": 2}
        anonymous = redis.Redis(host="localhost", port=port, **tls)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        check = redis.Redis(
            host="localhost", port=port, username="healthcheck", password="x", **tls
        )
        with pytest.raises(redis.exceptions.NoPermissionError):
            check.get("corem:anything")
        wrong = redis.Redis(host="localhost", port=port, username="corem", password="0" * 64, **tls)
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
        # A server certificate from another CA is refused (the system CAs are not used).
        untrusted = redis.Redis(host="localhost", port=port, ssl=True, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            untrusted.ping()
        for client in (anonymous, check, wrong, untrusted, plain):
            client.close()
    finally:
        proc.terminate()
        proc.wait(10)
    # The ACL holds the password's hash only.
    assert password not in (secrets / "redis-acl").read_text()


def test_kubernetes_redis_example_has_a_password_and_tls() -> None:
    example = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (DEPLOY / "k8s" / "secrets.example.yaml").read_text()) if d}  # fmt: skip
    url = example["corem-redis"]["stringData"]["url"]
    assert url.startswith("rediss://corem:") and "@" in url


# -- reproducible image -------------------------------------------------------------------------
def test_base_image_is_pinned_by_digest() -> None:
    args = [rest for word, rest in dockerfile() if word == "ARG" and "PYTHON_IMAGE" in rest]
    assert args and re.search(r"@sha256:[0-9a-f]{64}$", args[0]), args
    froms = [rest for word, rest in dockerfile() if word == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms


def test_installs_use_the_constraints_file_and_it_is_current() -> None:
    runs = " ".join(rest for word, rest in dockerfile() if word == "RUN")
    for pip in re.findall(r"pip (?:wheel|install)[^&]*", runs):
        assert "--constraint" in pip, pip
    assert "--upgrade pip" not in runs  # no unpinned tool upgrade
    copies = [rest for word, rest in dockerfile() if word == "COPY"]
    assert any(c.startswith("deploy/constraints.txt ") for c in copies)
    pins: dict[str, str] = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    # Every runtime dependency is pinned, at a version pyproject allows.
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_constraints
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert set(pins) == set(gen_constraints.closure())
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = gen_constraints.normalize(req.name)
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
