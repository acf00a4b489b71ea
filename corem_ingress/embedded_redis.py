"""A private redis-server child on a free loopback port: the dev default, and the tests' Redis.

It dies with its parent (PR_SET_PDEATHSIG on Linux), keeps no data on disk
unless a directory is given, and is stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(
        self,
        *,
        binary: str = "redis-server",
        port: int | None = None,
        data_dir: str | Path | None = None,
        persist: bool = False,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise EmbeddedRedisError(
                f"no Redis URL configured and {binary!r} was not found: install redis-server "
                "(apt-get install redis-server) or set COREM_REDIS_URL"
            )
        self.binary = path
        self.port = port
        self.persist = persist
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="corem-redis-"))
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        last_error = ""
        for _ in range(5):  # the free port may be taken between probe and bind: retry
            port = self.port or free_port()
            args = [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--protected-mode",
                "yes",
                "--dir",
                str(self.data_dir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ]
            if self.persist:
                args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            else:
                args += ["--save", "", "--appendonly", "no"]
            log_path = self.data_dir / "redis.log"
            with open(log_path, "ab") as log_file:
                self.proc = subprocess.Popen(
                    args,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                    # Its own session: a Ctrl-C at the terminal reaches the broker, which then
                    # stops this child itself after its graceful shutdown (not before it).
                    start_new_session=True,
                )
            if self._wait_ready(port, timeout):
                self.port = port
                return self
            self._terminate()
            last_error = log_path.read_text(errors="replace")[-500:]
            if self.port:
                break
        raise EmbeddedRedisError(f"redis-server did not start: {last_error.strip()}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        self._terminate()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
