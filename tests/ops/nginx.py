"""deploy/nginx.conf, run for real on loopback: the shipped file with only hosts and ports
rewritten (compose service names -> 127.0.0.1 and OS-chosen ports)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from corem_ingress.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

#: Broker settings behind the shipped nginx.conf, which sends PROXY protocol on its TCP
#: upstreams: nginx (127.0.0.1 here) is the trusted proxy; test clients that need an address
#: of their own bind another loopback address (127.0.0.2...).
BEHIND_NGINX = {
    "COREM_PROXY_TRUSTED_CIDRS": "127.0.0.1/32",
    "COREM_MQTT_PROXY_PROTOCOL": "required",
    "COREM_HTTP_PROXY_PROTOCOL": "required",
}


def _module_line() -> str:
    """Debian builds the stream module as a dynamic module: load it (compose's image has it)."""
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10).stderr
    if "--with-stream=dynamic" not in out:
        return ""
    match = re.search(r"--modules-path=(\S+)", out)
    path = Path(match.group(1) if match else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    return f"load_module {path};\n"


#: The shipped nginx.conf's listeners: MQTT/TLS, device HTTP, CoAP/DTLS.
LB_PORTS = (8883, 8080, 5684)


def addresses(
    nodes: Mapping[str, Mapping[int, int | None]],
) -> tuple[dict[str, int], dict[int, int]]:
    """``(backends, listens)`` for render(): per compose service name ("broker-a"), its local
    port for each shipped port -- a free, closed one where that node runs no such listener --
    and a free local port for each of nginx's own listeners."""
    backends = {
        f"{node}:{port}": ports.get(port) or free_port()
        for node, ports in nodes.items()
        for port in LB_PORTS
    }
    return backends, {port: free_port() for port in LB_PORTS}


def render(backends: dict[str, int], listens: dict[int, int], prefix: Path) -> str:
    """``backends``: "broker-a:8883" -> local port; ``listens``: shipped port -> local port."""
    text = NGINX_CONF.read_text()
    text = re.sub(r"^\s*resolver .*$", "", text, flags=re.M)  # no Docker DNS here
    text = text.replace("pid /tmp/nginx.pid;", f"pid {prefix}/nginx.pid;")
    text = text.replace("access_log /dev/stdout l4;", f"access_log {prefix}/access.log l4;")

    def server(m: re.Match[str]) -> str:
        return f"server 127.0.0.1:{backends[m.group(1)]}"

    text = re.sub(r"server ([\w-]+:\d+)", server, text)

    def listen(m: re.Match[str]) -> str:
        return f"listen 127.0.0.1:{listens[int(m.group(1))]}{m.group(2) or ''};"

    text = re.sub(r"listen (\d+)(\s+udp)?;", listen, text)
    return _module_line() + text


def check(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=20,
    )


class Nginx:
    def __init__(self, conf_text: str, prefix: Path) -> None:
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf_text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_port: int, timeout: float = 10) -> Nginx:
        with open(self.prefix / "stderr.log", "wb") as out:
            self.proc = subprocess.Popen(
                [
                    NGINX, "-p", str(self.prefix), "-c", str(self.conf),
                    "-e", str(self.prefix / "error.log"), "-g", "daemon off;",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError((self.prefix / "error.log").read_text()[-1000:])
            try:
                with socket.create_connection(("127.0.0.1", wait_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen")

    def stop(self) -> None:
        """SIGQUIT-free: SIGTERM to the master (its PID), which ends its workers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
