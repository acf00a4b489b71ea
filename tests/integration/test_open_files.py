"""The node raises its open-file limit (RLIMIT_NOFILE) at start and logs what it got."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from corem_ingress.embedded_redis import free_port


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_serve_raises_a_low_soft_limit_to_the_hard_limit_and_logs_it(
    tmp_path: Path, redis_url: str, kek_env: str
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    port = free_port()
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_HEALTH_PORT": str(port),
        "COREM_HTTP_ENABLED": "false",
        "COREM_MQTT_ENABLED": "false",
        "COREM_COAP_ENABLED": "false",
        "COREM_STATE_DIR": str(tmp_path / "state"),
        "COREM_LOGGING_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Started the way a distribution starts a service: a low soft limit.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the broker exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the broker never became ready")
        assert _limits(proc.pid) == (hard, hard)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    got = [e for e in events if e.get("event") == "node.open_files"]
    assert len(got) == 1, err
    assert (got[0]["soft_before"], got[0]["soft"], got[0]["hard"]) == (low, hard, hard)
    assert not [e for e in events if e.get("event") == "node.open_files_short"]


_PROBE = """
import json, resource
from corem_ingress.fdlimit import raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))
out = {}
for wanted in (0, 100, 10**6):
    got = raise_open_files(wanted)
    out[wanted] = [got.soft, got.hard, got.refused, got.short]
print(json.dumps(out))
"""


def test_raise_open_files_never_lowers_and_says_when_the_hard_limit_stays() -> None:
    # In a child: lowering a hard limit cannot be undone without CAP_SYS_RESOURCE.
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    out = json.loads(run.stdout)
    assert out["0"][:2] == [512, 512]  # soft raised to the hard limit
    assert out["100"][:2] == [512, 512]  # a lower wish lowers nothing
    soft, hard, refused, short = out["1000000"]
    if hard == 512:  # no CAP_SYS_RESOURCE (this machine, most containers): said why
        assert soft == 512 and short and "CAP_SYS_RESOURCE" in refused
    else:  # privileged: both limits raised as asked
        assert (soft, hard, refused, short) == (10**6, 10**6, None, False)
