"""Real local Redis topologies for tests: a 3-master Cluster and a master + Sentinel.

Every process is started by us on loopback, on OS-chosen free ports, and stopped by its
PID (SIGTERM, then SIGKILL). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from corem_ingress.embedded_redis import free_port


class RedisProc:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, *, kill: bool = False) -> None:
        if self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """One inline command over a raw socket (no client library): the reply's first chunk."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((" ".join(args) + "\r\n").encode())
        return s.recv(65536)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Topology:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="corem-topology-"))
        self.procs: list[RedisProc] = []

    def _spawn(self, args: list[str], port: int, name: str) -> RedisProc:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        rp = RedisProc(port, proc, log)
        self.procs.append(rp)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited: {log.read_text(errors='replace')[-400:]}")
            return _command(port, "PING").startswith(b"+PONG")

        _wait(ready, 10, f"{name} to answer PING")
        return rp

    def _server(self, name: str, *extra: str) -> RedisProc:
        port = free_port()
        args = [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--loglevel", "warning",
            "--dbfilename", f"{name}.rdb", *extra,
        ]  # fmt: skip
        return self._spawn(args, port, name)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterProcs(_Topology):
    """Three masters (``replicas`` replicas each, default none); a failed master without a
    replica leaves the other slots served."""

    def __init__(self, *, replicas: int = 0) -> None:
        super().__init__()
        self.replica_count = replicas

    def start(self) -> RedisClusterProcs:
        for i in range(3 * (1 + self.replica_count)):
            self._server(
                f"cluster{i}",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / f"nodes{i}.conf"),
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", "1500",
                "--cluster-require-full-coverage", "no",
            )  # fmt: skip
        addrs = [f"127.0.0.1:{p.port}" for p in self.procs]
        r = subprocess.run(
            ["redis-cli", "--cluster", "create", *addrs,
             "--cluster-replicas", str(self.replica_count), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]

        def all_ok() -> bool:
            return all(
                b"cluster_state:ok" in _command(p.port, "CLUSTER", "INFO") for p in self.procs
            )

        _wait(all_ok, 30, "cluster_state:ok on every node")
        if self.replica_count:

            def replicas_synced() -> bool:
                links = [_command(p.port, "INFO", "replication") for p in self.procs]
                return sum(b"master_link_status:up" in x for x in links) == 3 * self.replica_count

            _wait(replicas_synced, 30, "every replica in sync")
        return self

    def live(self) -> list[RedisProc]:
        return [p for p in self.procs if p.proc.poll() is None]

    def slot_owner(self, slot: int) -> int:
        """The port of the master serving ``slot``, as a live node's CLUSTER NODES says."""
        reply = _command(self.live()[0].port, "CLUSTER", "NODES").decode()
        for line in reply.splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for rng in fields[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return port
        raise AssertionError(f"no live owner for slot {slot}")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in self.procs)

    def by_port(self, port: int) -> RedisProc:
        return next(p for p in self.procs if p.port == port)


class RedisSentinelProcs(_Topology):
    """One master (and ``replicas`` replicas) watched by one sentinel (quorum 1), service
    name ``corem``."""

    service = "corem"

    def __init__(self, *, replicas: int = 0, down_after_ms: int = 5000) -> None:
        super().__init__()
        self.replica_count = replicas
        self.down_after_ms = down_after_ms
        self.replicas: list[RedisProc] = []

    def start(self) -> RedisSentinelProcs:
        self.master = self._server("master")
        for i in range(self.replica_count):
            self.replicas.append(
                self._server(f"replica{i}", "--replicaof", "127.0.0.1", str(self.master.port))
            )
        port = free_port()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self.sentinel = self._spawn(
            [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
            port,
            "sentinel",
        )

        def knows_master() -> bool:
            reply = _command(port, "SENTINEL", "get-master-addr-by-name", self.service)
            return str(self.master.port).encode() in reply

        _wait(knows_master, 15, "the sentinel to know the master")
        for r in self.replicas:

            def knows_replica(r: RedisProc = r) -> bool:
                reply = _command(port, "SENTINEL", "replicas", self.service)
                link = _command(r.port, "INFO", "replication")
                return str(r.port).encode() in reply and b"master_link_status:up" in link

            _wait(knows_replica, 20, "the sentinel to know the replica")
        return self

    def master_port(self) -> int:
        reply = _command(self.sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service)
        return int(reply.split(b"\r\n")[4])

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"
