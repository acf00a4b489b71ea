"""Device-side peers built from source (``../shared/peers``): Eclipse Wakaama's LwM2M
client with tinydtls, mbedTLS's ``ssl_client2`` (DTLS 1.2, Connection ID) and tinydtls's
``dtls-client``.

``scripts/install-deps.sh`` builds them (so CI does); ``peer("name")`` returns a binary's
path and builds them first if they are missing. A test that needs a peer fails (never
skips) when it cannot be built: an interop test that silently does not run proves nothing.

Environment: ``COREM_PEERS_SRC`` (the folder with ``build.sh``, default the first of
``<repo>/../shared/peers`` and ``/work/shared/peers`` that exists) and ``COREM_PEERS_DIR``
(where they are built, default ``~/.cache/corem-peers``, as ``build.sh``).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]

#: Binary name -> path under the build folder (as printed by build.sh).
BINARIES = {
    "ssl_client2": "mbedtls-3.5.2/build/programs/ssl/ssl_client2",
    "ssl_server2": "mbedtls-3.5.2/build/programs/ssl/ssl_server2",
    "lwm2mclient": "wakaama/build/lwm2mclient",
    "lwm2mclient_tinydtls": "wakaama/build/lwm2mclient_tinydtls",
    "dtls_client": "tinydtls/tests/dtls-client",
}


def peers_src() -> Path | None:
    env = os.environ.get("COREM_PEERS_SRC")
    candidates = (
        [Path(env)] if env else [_REPO.parent / "shared" / "peers", Path("/work/shared/peers")]
    )
    for c in candidates:
        if (c / "build.sh").is_file():
            return c
    return None


def peers_dir() -> Path:
    env = os.environ.get("COREM_PEERS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "corem-peers"


@functools.cache
def _build() -> str:
    src = peers_src()
    if src is None:
        return "no ../shared/peers/build.sh found (set COREM_PEERS_SRC)"
    proc = subprocess.run(
        ["bash", str(src / "build.sh"), str(peers_dir())],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return "" if proc.returncode == 0 else f"build.sh failed: {proc.stderr[-2000:]}"


def peer(name: str) -> str:
    """The path of a built peer binary; builds the peers if needed, fails the test if it can't."""
    path = peers_dir() / BINARIES[name]
    if not os.access(path, os.X_OK):
        problem = _build()
        if not os.access(path, os.X_OK):
            pytest.fail(f"device peer {name} is not available: {problem or 'not built'}")
    return str(path)
