"""Deployment files checked without a container engine: they parse, and agree with the code.

Dockerfile (stages, EXPOSE, USER, HEALTHCHECK, COPY sources vs .dockerignore), compose
(services, ports, config, nginx upstreams) and Kubernetes manifests (ConfigMap loads with
the real config loader; ports, probes, env, secrets, affinity, PDB selectors).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from corem_ingress import config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

#: COREM_ variables read outside the config tree (secrets, the config path); each must
#: really be read by the code (checked below).
EXTRA_ENV = {"COREM_CONFIG", "COREM_PSK_KEK", "COREM_PSK_KEK_FILE", "COREM_HTTP_ADMIN_TOKENS"}
PORTS = {"mqtt": 8883, "http": 8080, "coap": 5684, "health": 9100}


def valid_env() -> set[str]:
    return set(config.env_names()) | EXTRA_ENV


def load_cfg(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> config.Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config.load(path, environ or {})


def docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in docs(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


# -- every file -------------------------------------------------------------------------------
def test_every_yaml_parses_and_k8s_objects_are_well_formed() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 7
    for path in files:
        assert docs(path), path
    for (kind, name), obj in k8s_objects().items():
        assert obj.get("apiVersion"), (kind, name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name


def test_every_corem_variable_in_deploy_files_exists() -> None:
    used: set[str] = set()
    for path in [*DEPLOY.rglob("*"), ROOT / ".dockerignore"]:
        if path.is_file():
            used |= set(re.findall(r"\bCOREM_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert used, "no COREM_ variable found"
    assert sorted(used - valid_env()) == []


def test_extra_env_names_are_read_by_the_code() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "corem_ingress").rglob("*.py"))
    for name in EXTRA_ENV:
        assert f'"{name}"' in source, name


# -- Dockerfile -------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_dockerfile_is_multi_stage_with_a_build_toolchain_only_in_the_build_stage() -> None:
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert build[0][1].endswith("AS build")
    build_runs = " ".join(rest for word, rest in build if word == "RUN")
    for pkg in ("build-essential", "autoconf", "automake", "libtool"):
        assert pkg in build_runs, pkg
    assert "pip wheel" in build_runs
    runtime_text = " ".join(rest for _, rest in runtime)
    assert "build-essential" not in runtime_text and "gcc" not in runtime_text
    assert "--from=build" in runtime_text
    assert "slim" in (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_expose_user_healthcheck() -> None:
    runtime = stages()[-1]
    exposed = {p for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert exposed == {"8883/tcp", "8080/tcp", "5684/udp", "9100/tcp"}
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    health = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1
    assert "127.0.0.1:9100/healthz" in health[0] and "CMD" in health[0]
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "COREM_HEALTH_PORT=9100" in env and "COREM_HEALTH_HOST=0.0.0.0" in env
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entry == ['["corem-ingress"]']


def _ignored(rel: str, patterns: list[str]) -> bool:
    hit = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatch(rel, cand) or rel.startswith(cand + "/")
            for cand in (pat, pat.removeprefix("**/"))
        ):
            hit = not neg
    return hit


def test_dockerfile_copies_exist_and_are_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for pat in (".git", ".venv", "certs-dev", "tests", ".corem"):
        assert pat in patterns
    for word, rest in dockerfile():
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = rest.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not _ignored(src.rstrip("/"), patterns), src
            for f in (ROOT / src).rglob("*.py") if (ROOT / src).is_dir() else []:
                assert not _ignored(str(f.relative_to(ROOT)), patterns) or "__pycache__" in str(f)


def test_image_default_config_loads(tmp_path: Path) -> None:
    copies = [rest.split() for word, rest in dockerfile() if word == "COPY" and "configs/" in rest]
    assert copies and copies[0][-1] == "/etc/corem/config.yaml"
    cfg = load_cfg((ROOT / copies[0][0]).read_text(), tmp_path)
    assert cfg.health.port == 9100


# -- compose -----------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _ports(entries: list[str]) -> set[str]:
    out = set()
    for e in entries:
        port, _, proto = str(e).rpartition(":")[2].partition("/")
        out.add(f"{port}/{proto or 'tcp'}")
    return out


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"redis", "broker-a", "broker-b", "lb"} <= set(services)
    brokers = [services["broker-a"], services["broker-b"]]
    node_ids = set()
    for b in brokers:
        assert b["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / b["build"]["context"] / b["build"]["dockerfile"]).is_file()
        assert b["read_only"] is True and not str(b["user"]).startswith("0")
        env = b["environment"]
        assert set(env) <= valid_env()
        # The Redis URL carries a password: a secret file (redis.url_file), never the env.
        assert "COREM_REDIS_URL" not in env
        node_ids.add(env["COREM_NODE_ID"])
        assert b["depends_on"]["redis"]["condition"] == "service_healthy"
        assert {"corem-psk-kek", "corem-admin-tokens", "corem-redis-url"} <= set(b["secrets"])
    assert len(node_ids) == 2
    lb = services["lb"]
    assert _ports(lb["ports"]) == {"8883/tcp", "8080/tcp", "5684/udp"}
    assert {"broker-a", "broker-b"} <= set(lb["depends_on"])
    redis = services["redis"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    # Redis requires a password: its ACL file (default user off) is a compose secret.
    command = redis["command"]
    assert command[0] == "redis-server"
    acl = command[command.index("--aclfile") + 1]
    assert acl.removeprefix("/run/secrets/") in redis["secrets"]


def test_compose_config_loads_and_matches_mounts(tmp_path: Path) -> None:
    broker = compose()["services"]["broker-a"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    env = broker["environment"]
    cfg_file = DEPLOY / mounts[env["COREM_CONFIG"]]
    shipped = yaml.safe_load(cfg_file.read_text())
    url_secret = shipped["redis"]["url_file"]
    assert url_secret.removeprefix("/run/secrets/") in broker["secrets"]
    # The secret file's content, as scripts/compose-secrets.sh writes it (here: a stand-in).
    stand_in = tmp_path / "redis-url"
    stand_in.write_text("redis://corem:pw@redis:6379/0\n")
    cfg = load_cfg(cfg_file.read_text(), tmp_path, {**env, "COREM_REDIS_URL_FILE": str(stand_in)})
    assert cfg.redis.url == "redis://corem:pw@redis:6379/0"
    assert cfg.node_id == "broker-a"
    assert (cfg.mqtt.port, cfg.http.port, cfg.coap.port, cfg.health.port) == tuple(PORTS.values())
    assert cfg.health.host == "0.0.0.0" and cfg.mqtt.host == "0.0.0.0"
    # Secrets are compose secrets (mounted under /run/secrets/<name>), certs under the TLS mount.
    secrets = set(compose()["secrets"])
    assert cfg.credentials.psk_kek_file.removeprefix("/run/secrets/") in secrets
    assert cfg.http.admin_tokens_file.removeprefix("/run/secrets/") in secrets
    for path in (
        cfg.mqtt.server_cert,
        cfg.mqtt.server_key,
        *cfg.coap.client_ca_files,
        cfg.http.tls_cert,
        cfg.http.tls_key,
    ):
        assert path and any(path.startswith(m + "/") for m in mounts), path
    assert cfg.state_dir.startswith("/tmp") and "/tmp" in broker["tmpfs"]


def test_nginx_balances_both_brokers_with_source_ip_affinity() -> None:
    text = (DEPLOY / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", text))
    servers = dict(
        re.findall(r"server\s*\{\s*listen\s+(\d+(?:\s+udp)?);\s*proxy_pass\s+(\w+);", text)
    )
    assert set(servers) == {"8883", "8080", "5684 udp"}
    expected = {"8883": 8883, "8080": 8080, "5684 udp": 5684}
    for listen, upstream in servers.items():
        body = upstreams[upstream]
        assert "hash $remote_addr consistent;" in body, upstream
        backends = set(re.findall(r"server\s+([\w-]+):(\d+)", body))
        assert backends == {
            ("broker-a", str(expected[listen])),
            ("broker-b", str(expected[listen])),
        }


# -- Kubernetes --------------------------------------------------------------------------------
def deployment() -> dict[str, Any]:
    return k8s_objects()[("Deployment", "corem-ingress")]


def container() -> dict[str, Any]:
    (c,) = deployment()["spec"]["template"]["spec"]["containers"]
    return c


def configmap_config(tmp_path: Path) -> config.Config:
    cm = k8s_objects()[("ConfigMap", "corem-ingress-config")]
    env = {e["name"]: e.get("value", "x") for e in container()["env"]}
    env["COREM_REDIS_URL"] = "redis+sentinel://127.0.0.1:26379/corem/0"  # from a Secret
    return load_cfg(cm["data"]["config.yaml"], tmp_path, env)


def test_configmap_loads_with_the_config_loader(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    assert cfg.health.host == "0.0.0.0" and cfg.health.port == 9100
    assert cfg.logging.format == "json"
    assert cfg.node_id == "x"  # from the pod name


def test_container_ports_match_the_config(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container()["ports"]}
    assert ports["mqtts"] == (cfg.mqtt.port, "TCP")
    assert ports["http"] == (cfg.http.port, "TCP")
    assert ports["admin"] == (cfg.http.admin_port, "TCP")
    assert ports["coaps"] == (cfg.coap.port, "UDP")
    assert ports["metrics"] == (cfg.health.port, "TCP")


def test_probes_on_the_health_port() -> None:
    c = container()
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert named.get(get["port"], get["port"]) == 9100
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.Config().shutdown_deadline_s


def test_readiness_reacts_fast_and_does_not_follow_the_shared_redis(tmp_path: Path) -> None:
    """/readyz flips at once on shutdown and never waits for Redis: a short probe notices a
    draining pod within seconds; readiness is not tied to Redis by the shipped config."""
    ready = container()["readinessProbe"]
    cfg = configmap_config(tmp_path)
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 3
    assert ready["timeoutSeconds"] < cfg.redis.socket_timeout_s
    assert cfg.health.readiness_requires_redis is False


def test_env_and_secret_files_are_mounted(tmp_path: Path) -> None:
    c = container()
    env = {e["name"]: e for e in c["env"]}
    assert set(env) <= valid_env()
    assert env["COREM_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["COREM_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "corem-redis"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    secret_files: set[str] = set()
    for path, m in mounts.items():
        vol = volumes[m["name"]]
        assert m.get("readOnly") or "emptyDir" in vol, path
        for src in vol.get("projected", {}).get("sources", []):
            for item in src["secret"]["items"]:
                secret_files.add(f"{path}/{item['path']}")
    assert env["COREM_PSK_KEK_FILE"]["value"] in secret_files
    assert env["COREM_HTTP_ADMIN_TOKENS_FILE"]["value"] in secret_files
    cfg = configmap_config(tmp_path)
    assert cfg.credentials.psk_kek_file in secret_files
    # The ConfigMap is mounted as a directory, without subPath: edits reach the pods' files
    # (the broker reads them at start: docs/deploy.md says to roll the pods after an edit).
    config_path = env["COREM_CONFIG"]["value"]
    config_mount = next(m for p, m in mounts.items() if config_path.startswith(p + "/"))
    assert "subPath" not in config_mount
    assert "configMap" in volumes[config_mount["name"]]
    assert (
        config_path.rsplit("/", 1)[1]
        in k8s_objects()[("ConfigMap", "corem-ingress-config")]["data"]
    )
    tls_mount = next(p for p, m in mounts.items() if volumes[m["name"]].get("secret"))
    for path in (cfg.mqtt.server_cert, cfg.mqtt.server_key, *cfg.mqtt.client_ca_files):
        assert path.startswith(tls_mount + "/"), path
    # The read-only root file system leaves /tmp (an emptyDir) for the state directory.
    assert cfg.state_dir.startswith("/tmp/") and "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_referenced_secrets_are_described_in_the_example() -> None:
    example = {d["metadata"]["name"]: d for d in docs(K8S / "secrets.example.yaml")}
    spec = deployment()["spec"]["template"]["spec"]
    refs: set[tuple[str, str]] = set()
    for v in spec["volumes"]:
        for src in v.get("projected", {}).get("sources", []):
            refs |= {(src["secret"]["name"], i["key"]) for i in src["secret"]["items"]}
    for e in container()["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs.add((ref["name"], ref["key"]))
    for name, key in refs:
        assert key in example[name]["stringData"], (name, key)
    tls = next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
    assert tls in example


def test_security_context_non_root_read_only() -> None:
    pod = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_services_ports_and_session_affinity() -> None:
    objs = k8s_objects()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p for p in container()["ports"]}
    tcp, udp = objs[("Service", "corem-ingress-tcp")], objs[("Service", "corem-ingress-udp")]
    assert {(p["port"], p["protocol"]) for p in tcp["spec"]["ports"]} == {
        (8883, "TCP"),
        (8080, "TCP"),
    }
    assert {(p["port"], p["protocol"]) for p in udp["spec"]["ports"]} == {(5684, "UDP")}
    # Issue 22.5: ClientIP affinity on TCP pinned a whole carrier NAT to one pod; DTLS on UDP
    # needs it (a session lives in one pod's memory).
    assert tcp["spec"].get("sessionAffinity", "None") == "None"
    assert udp["spec"]["sessionAffinity"] == "ClientIP"
    for svc in (tcp, udp):
        assert svc["spec"]["externalTrafficPolicy"] == "Local"  # source IPs kept
    # One external address for both: the provider's sharing key (MetalLB), the same on both.
    shared = {
        svc["metadata"]["annotations"]["metallb.universe.tf/allow-shared-ip"] for svc in (tcp, udp)
    }
    assert len(shared) == 1
    for (kind, _name), svc in objs.items():
        if kind != "Service":
            continue
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            target = ports[p["targetPort"]]
            assert target["protocol"] == p["protocol"]


def test_pdb_and_deployment_selectors() -> None:
    objs = k8s_objects()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = objs[("PodDisruptionBudget", "corem-ingress")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < deployment()["spec"]["replicas"]
    assert deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {
        p.name
        for p in K8S.glob("*.yaml")
        if p.name not in ("kustomization.yaml", "secrets.example.yaml")
    }
    assert set(kust["resources"]) == files


@pytest.mark.parametrize("doc", ["deploy.md"])
def test_deploy_doc_names_the_files(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    for name in ("deploy/Dockerfile", "docker-compose.yml", "deploy/k8s", "redis+sentinel://"):
        assert name in text, name
