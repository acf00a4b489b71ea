"""The README's quick start, run as a new user runs it (issue 20): parsed from README.md itself.

* "Operating it": ``make run`` (the Quick start's command) in one process, then every command
  of the section's block, as written, from a second process. ``<name>`` placeholders take
  the value of that field in the newest output that printed one.
* "HTTP: a curl session": every ``$ `` command of the section, as written, in order --
  including its ``make run`` (started as the second process) -- and each answer compared with
  the one the README shows: same status codes, same fields and values, except the secrets
  and ids of a fresh run, which are learnt from each answer and substituted in every later
  command (the README's token, device id, key... become this run's).

Whatever the README says is what runs: change the README and this test runs the new
commands. Only the listening ports are substituted (free ports, never the fixed dev ones):
both shells get ``COREM_*_PORT`` overrides and ``localhost:8080`` becomes the HTTP port.
Everything runs in a scratch copy of the repository's Makefile, configs and scripts, with
this checkout's virtualenv linked in, so ``certs-dev/`` and ``.corem/`` are the copy's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corem_ingress.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND_TIMEOUT_S = 180

pytestmark = pytest.mark.integration


# -- reading the README -------------------------------------------------------------------------
def section(title: str) -> str:
    """The text under the ``## `` heading that starts with ``title``."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def block_commands(block: str) -> list[str]:
    """A plain block: one command per line (comments and blank lines skipped)."""
    out = []
    for line in block.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append(stripped)
    return out


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def session_steps(block: str) -> list[Step]:
    """A transcript: ``$ command`` (``\\``-continued lines joined), then its shown output."""
    steps: list[Step] = []
    continued = False
    for line in block.splitlines():
        if continued:
            steps[-1].command += "\n" + line
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            steps.append(Step(line[2:]))
            continued = line.endswith("\\")
        elif line.strip():
            assert steps, f"output before any command: {line!r}"
            steps[-1].expected.append(line)
    return steps


_ASSIGNMENTS = re.compile(r"(export\s+)?[A-Za-z_]\w*=\S+(\s+[A-Za-z_]\w*=\S+)*")


def is_assignment(command: str) -> bool:
    return _ASSIGNMENTS.fullmatch(command.strip()) is not None


# -- a scratch copy and its broker ----------------------------------------------------------------
@dataclass
class Ports:
    http: int = field(default_factory=free_port)
    mqtt: int = field(default_factory=free_port)
    coap: int = field(default_factory=free_port)
    health: int = field(default_factory=free_port)

    def env(self) -> dict[str, str]:
        return {
            "COREM_HTTP_PORT": str(self.http),
            "COREM_MQTT_PORT": str(self.mqtt),
            "COREM_COAP_PORT": str(self.coap),
            "COREM_HEALTH_PORT": str(self.health),
        }


def user_env() -> dict[str, str]:
    """A new user's shell: nothing of ours configured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}


def scratch_copy(dest: Path) -> Path:
    """What ``make run`` needs from a clone; the checkout's virtualenv linked in as ``.venv``
    (its pieces, so that the marker ``make setup`` leaves is the copy's own)."""
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "configs", dest / "configs")
    shutil.copytree(ROOT / "scripts", dest / "scripts")
    venv = dest / ".venv"
    venv.mkdir()
    real = ROOT / ".venv"
    for entry in real.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than the copied pyproject.toml: setup is done
    return dest


@contextlib.contextmanager
def broker(command: str, cwd: Path, ports: Ports, prelude: list[str]) -> Iterator[None]:
    """Run ``command`` (the README's ``make run`` line) in its own process group until the
    broker it starts is ready; stop the group afterwards."""
    log = cwd / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", "\n".join([*prelude, command])],
            cwd=cwd,
            env={**user_env(), **ports.env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _ready(ports):
            assert proc.poll() is None, f"{command!r} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _ready(ports: Ports) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.health}/readyz", timeout=1) as r:
            body = json.loads(r.read())
        with socket.create_connection(("127.0.0.1", ports.http), timeout=1):
            pass
    except OSError:
        return False
    return bool(body["status"] == "ready" and not body["degraded"])


def run(
    command: str, cwd: Path, prelude: list[str], ports: Ports
) -> subprocess.CompletedProcess[str]:
    """One command in the second shell (which knows the ports, e.g. for ``simulate``)."""
    r = subprocess.run(
        ["bash", "-c", "\n".join([*prelude, command])],
        cwd=cwd,
        env={**user_env(), **ports.env()},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert r.returncode == 0, f"{command!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


# -- "Operating it" ---------------------------------------------------------------------------
def _find(value: Any, name: str) -> Any:
    """The first ``name`` field in a JSON value (depth first)."""
    if isinstance(value, dict):
        if name in value:
            return value[name]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = _find(item, name)
            if found is not None:
                return found
    return None


def fill_placeholders(command: str, outputs: list[Any]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        for output in reversed(outputs):
            found = _find(output, name)
            if isinstance(found, str):
                return found
        raise AssertionError(f"README placeholder <{name}> names nothing printed above")

    return re.sub(r"<([a-z_]+)>", value, command)


def test_operating_it_block_runs_as_written(tmp_path: Path) -> None:
    quick_start = [c for b in sh_blocks(section("Quick start")) for c in block_commands(b)]
    start = next(c for c in quick_start if "make run" in c)
    (block,) = sh_blocks(section("Operating it"))
    commands = block_commands(block)
    assert len(commands) > 5
    cwd = scratch_copy(tmp_path)
    ports = Ports()
    prelude: list[str] = []
    outputs: list[Any] = []
    ran = 0
    with broker(start, cwd, ports, prelude):
        for command in commands:
            if is_assignment(command):
                prelude.append(command)
                continue
            r = run(fill_placeholders(command, outputs), cwd, prelude, ports)
            try:
                outputs.append(json.loads(r.stdout))
            except ValueError:
                outputs.append(r.stdout)
            ran += 1
    print(f"\nREADME 'Operating it': {ran} commands ran against make run")
    assert ran == sum(not is_assignment(c) for c in commands)


# -- the curl session -------------------------------------------------------------------------
#: What differs on every run: keys, tokens, token lines, UUIDs, key ids, message and stream ids.
VOLATILE = re.compile(
    r"(sk_live_|cop_)[\w-]+"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|key_[0-9a-f]{16}|[0-9a-f]{32,}|\d+-\d+"
    r"|[a-z0-9_-]+:[0-9a-f]{64}(:[\w.-]+)?"
)


class Substitutions:
    """The README's example secrets and ids -> this run's, learnt from each answer."""

    def __init__(self, initial: dict[str, str]) -> None:
        self.map = dict(initial)

    def apply(self, text: str) -> str:
        for old in sorted(self.map, key=len, reverse=True):
            text = text.replace(old, self.map[old])
        return text

    def learn(self, shown: str, got: str) -> None:
        if shown in self.map:
            assert self.map[shown] == got, f"{shown!r} was {self.map[shown]!r}, now {got!r}"
        elif VOLATILE.fullmatch(shown):
            self.map[shown] = got
        else:  # anything else must read as the README says
            assert shown == got, (shown, got)

    def compare_json(self, shown: Any, got: Any, where: str) -> None:
        if isinstance(shown, dict):
            assert isinstance(got, dict) and set(got) == set(shown), (where, shown, got)
            for key in shown:
                self.compare_json(shown[key], got[key], f"{where}.{key}")
        elif isinstance(shown, list):
            assert isinstance(got, list) and len(got) == len(shown), (where, shown, got)
            for i, (a, b) in enumerate(zip(shown, got, strict=True)):
                self.compare_json(a, b, f"{where}[{i}]")
        elif isinstance(shown, str):
            assert isinstance(got, str), (where, shown, got)
            self.learn(shown, got)  # ids and secrets differ on every run, the rest must not
        elif isinstance(shown, float) and isinstance(got, float):
            pass  # times
        else:
            assert shown == got, (where, shown, got)

    def compare_line(self, shown: str, got: str) -> None:
        try:
            shown_json = json.loads(shown)
        except ValueError:
            shown_json = None
        if isinstance(shown_json, dict | list):
            self.compare_json(shown_json, json.loads(got), "answer")
            return
        key, sep, value = shown.partition("=")
        if sep and re.fullmatch(r"[a-z_]+", key):  # e.g. token=..., line=...
            got_key, _, got_value = got.partition("=")
            assert got_key == key, (shown, got)
            self.learn(value, got_value)
            return
        assert self.apply(shown) == got, (shown, got)

    def compare_http(self, shown: list[str], got: list[str]) -> None:
        """``curl -i``: the status line, each shown header but Date, then the body."""
        assert got[0] == shown[0], (shown[0], got[0])
        blank = shown.index("") if "" in shown else len(shown) - 1
        got_headers = dict(h.split(": ", 1) for h in got[1 : got.index("")])
        for header in shown[1:blank]:
            name, value = header.split(": ", 1)
            assert name in got_headers, f"no {name} header"
            if name != "Date":
                assert got_headers[name] == self.apply(value), (name, got_headers[name])
        self.compare_line(shown[-1], got[-1])


def test_curl_session_runs_as_written_and_answers_as_shown(tmp_path: Path) -> None:
    steps = [s for b in sh_blocks(section("HTTP: a curl session")) for s in session_steps(b)]
    assert any("make run" in s.command for s in steps) and any("curl" in s.command for s in steps)
    cwd = scratch_copy(tmp_path)
    ports = Ports()
    subs = Substitutions({"localhost:8080": f"localhost:{ports.http}"})
    prelude: list[str] = []
    with contextlib.ExitStack() as stack:
        checked = 0
        for step in steps:
            command = subs.apply(step.command)
            if "make run" in command:
                stack.enter_context(broker(command, cwd, ports, prelude))
                continue
            if is_assignment(command):
                prelude.append(command)
                continue
            r = run(command, cwd, prelude, ports)
            got = [line.rstrip("\r") for line in r.stdout.splitlines()]
            if step.expected and step.expected[0].startswith("HTTP/"):
                subs.compare_http(step.expected, got)
            else:
                assert len(got) == len(step.expected), (step.command, step.expected, got)
                for shown, line in zip(step.expected, got, strict=True):
                    subs.compare_line(shown, line)
            checked += 1
    print(f"\nREADME curl session: {checked} commands ran and answered as shown")
    assert checked >= 5
