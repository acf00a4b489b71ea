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
    def __init__(
        self, port: int, proc: subprocess.Popen[bytes], log: Path, args: list[str] | None = None
    ) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.args = args or []

    def restart(self) -> None:
        """Start it again with the same arguments (port, files) after it was stopped."""
        assert self.proc.poll() is not None, "still running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _wait(lambda: _command(self.port, "PING").startswith(b"+PONG"), 10, "PING after restart")

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
        rp = RedisProc(port, proc, log, args)
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
    """One master (and ``replicas`` replicas) watched by ``sentinels`` sentinels (quorum
    ``quorum``; default one sentinel, quorum 1), service name ``corem``."""

    service = "corem"

    def __init__(
        self,
        *,
        replicas: int = 0,
        down_after_ms: int = 5000,
        sentinels: int = 1,
        quorum: int = 1,
    ) -> None:
        super().__init__()
        self.replica_count = replicas
        self.down_after_ms = down_after_ms
        self.sentinel_count = sentinels
        self.quorum = quorum
        self.replicas: list[RedisProc] = []
        self.sentinels: list[RedisProc] = []

    def start(self) -> RedisSentinelProcs:
        self.master = self._server("master")
        for i in range(self.replica_count):
            self.replicas.append(
                self._server(f"replica{i}", "--replicaof", "127.0.0.1", str(self.master.port))
            )
        for i in range(self.sentinel_count):
            port = free_port()
            conf = self.dir / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            self.sentinels.append(
                self._spawn(
                    [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                    port,
                    f"sentinel{i}",
                )
            )
        self.sentinel = self.sentinels[0]
        port = self.sentinel.port

        def knows_master() -> bool:
            return all(
                str(self.master.port).encode()
                in _command(s.port, "SENTINEL", "get-master-addr-by-name", self.service)
                for s in self.sentinels
            )

        _wait(knows_master, 15, "the sentinels to know the master")
        if self.sentinel_count > 1:

            def know_each_other() -> bool:
                reply = _command(port, "SENTINEL", "sentinels", self.service)
                return reply.count(b"127.0.0.1") >= self.sentinel_count - 1

            _wait(know_each_other, 20, "the sentinels to know each other")
        for r in self.replicas:

            def knows_replica(r: RedisProc = r) -> bool:
                reply = _command(port, "SENTINEL", "replicas", self.service)
                link = _command(r.port, "INFO", "replication")
                return str(r.port).encode() in reply and b"master_link_status:up" in link

            _wait(knows_replica, 20, "the sentinel to know the replica")
        return self

    def master_port(self) -> int:
        live = [s for s in self.sentinels if s.proc.poll() is None]
        reply = _command(live[0].port, "SENTINEL", "get-master-addr-by-name", self.service)
        return int(reply.split(b"\r\n")[4])

    def by_port(self, port: int) -> RedisProc:
        return next(p for p in (self.master, *self.replicas) if p.port == port)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"
