"""Real DTLS 1.2 clients, run once each against the broker: libcoap's coap-client
(OpenSSL and GnuTLS builds), ``openssl s_client``, ``gnutls-cli``, mbedTLS's
``ssl_client2``, tinydtls's ``dtls-client``, Eclipse Wakaama's ``lwm2mclient_tinydtls`` and
aiocoap + DTLSSocket (tinydtls, in process).

``run_peer(client, credential, port)`` -> ``PeerRun``: whether the client itself saw its
handshake complete (its own words: "Handshake was completed", "STATE_READY", a 2.04, ...),
the fatal alert it says it received (parsed from its output, as a description code), how
long that took, and its output. Every run is bounded in time; processes are ended by the
PID we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.peers import peer

LOOPBACK = "127.0.0.1"
#: Each run: at most this long (a refusal or a success takes well under a second).
RUN_TIMEOUT = 8.0


@dataclass(frozen=True)
class Credential:
    kind: str  # "psk" or "cert"
    identity: str = ""
    key: bytes = b""
    cert: Path | None = None
    key_file: Path | None = None
    #: The CA of the broker's certificate (clients that check it).
    server_ca: Path | None = None


@dataclass
class PeerRun:
    accepted: bool
    #: The fatal alert the client says it received (description), None if it said none.
    alert: int | None
    seconds: float
    output: str


#: OpenSSL's alert names (as s_client / coap-client-openssl print them) -> description.
_OPENSSL_ALERTS = {
    "handshake failure": 40,
    "bad certificate": 42,
    "certificate revoked": 44,
    "certificate expired": 45,
    "certificate unknown": 46,
    "unknown ca": 48,
    "access denied": 49,
    "decode error": 50,
    "decrypt error": 51,
    "internal error": 80,
    "unknown psk identity": 115,
}


def _first_int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def _openssl_alert(text: str) -> int | None:
    m = re.search(r"alert (?:read:fatal:)?([a-z ]+?)(?: at |:|\n|$)", text)
    if m is None:
        return None
    return _OPENSSL_ALERTS.get(m.group(1).strip())


async def _run(
    argv: list[str],
    *,
    done: Callable[[str], bool],
    timeout: float = RUN_TIMEOUT,
    keep_stdin_open: bool = False,
) -> tuple[str, float]:
    """Run ``argv``; read its output until ``done(output)`` or it exits or ``timeout``; end
    it (by its PID) if still running. -> (output, seconds until done or exit)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if keep_stdin_open else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = bytearray()
    seconds = timeout
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    seconds = time.monotonic() - t0
                    break
                out += chunk
                if len(out) > 1_000_000:  # a client spinning on its prompt: enough
                    del out[200_000:]
                if done(out.decode(errors="replace")):
                    seconds = time.monotonic() - t0
                    break
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
    return out.decode(errors="replace"), seconds


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (scripts/install-deps.sh)")
    return path


# -- one function per client -------------------------------------------------------------------
async def coap_client(binary: str, cred: Credential, port: int) -> PeerRun:
    if cred.kind == "psk":
        args = ["-u", cred.identity, "-k", cred.key.decode()]
    else:
        assert cred.cert and cred.key_file and cred.server_ca
        args = ["-c", str(cred.cert), "-j", str(cred.key_file), "-R", str(cred.server_ca)]
    argv = [_binary(binary), "-m", "post", "-B", "5", *args, "-e", "x"]
    argv.append(f"coaps://{LOOPBACK}:{port}/up/event")
    # coap-client exits 0 either way: it prints nothing for a 2.04 without payload and
    # "cannot send CoAP pdu" after a refused handshake.
    out, seconds = await _run(argv, done=lambda _o: False)
    alert = _first_int(r"Alert '(\d+)'", out) or _openssl_alert(out)
    accepted = alert is None and not re.search(r" (WARN|ERR|CRIT) ", out)
    return PeerRun(accepted, alert, seconds, out)


async def openssl_s_client(cred: Credential, port: int) -> PeerRun:
    argv = [_binary("openssl"), "s_client", "-dtls1_2", "-connect", f"{LOOPBACK}:{port}"]
    if cred.kind == "psk":
        # The default suites: ECDHE-ECDSA ones first, then PSK (issue 11.5).
        argv += ["-psk", cred.key.hex(), "-psk_identity", cred.identity]
    else:
        assert cred.cert and cred.key_file and cred.server_ca
        argv += ["-cert", str(cred.cert), "-key", str(cred.key_file)]
        argv += ["-CAfile", str(cred.server_ca), "-verify_return_error"]
    out, seconds = await _run(argv, done=lambda _o: False)  # stdin at EOF: it quits
    alert = _first_int(r"SSL alert number (\d+)", out)
    accepted = alert is None and re.search(r"Cipher is (?!\(NONE\))", out) is not None
    return PeerRun(accepted, alert, seconds, out)


async def gnutls_cli(cred: Credential, port: int) -> PeerRun:
    priority = "NORMAL:-VERS-ALL:+VERS-DTLS1.2"
    argv = [_binary("gnutls-cli"), "--udp", "-p", str(port)]
    if cred.kind == "psk":
        argv += ["--priority", priority + ":+PSK", "--pskusername", cred.identity]
        argv += ["--pskkey", cred.key.hex()]
    else:
        assert cred.cert and cred.key_file and cred.server_ca
        argv += ["--priority", priority, "--x509cafile", str(cred.server_ca)]
        argv += ["--x509certfile", str(cred.cert), "--x509keyfile", str(cred.key_file)]
    argv.append(LOOPBACK)
    out, seconds = await _run(argv, done=lambda o: "Handshake was completed" in o)
    alert = _first_int(r"Received alert \[(\d+)\]", out)
    return PeerRun("Handshake was completed" in out, alert, seconds, out)


async def mbedtls_ssl_client2(
    cred: Credential, port: int, *, extra: tuple[str, ...] = ()
) -> PeerRun:
    argv = [peer("ssl_client2"), f"server_addr={LOOPBACK}", f"server_port={port}", "dtls=1"]
    argv += ["read_timeout=1000", "debug_level=1", "exchanges=1", *extra]
    if cred.kind == "psk":
        argv += [f"psk={cred.key.hex()}", f"psk_identity={cred.identity}"]
    else:
        assert cred.cert and cred.key_file and cred.server_ca
        argv += [f"crt_file={cred.cert}", f"key_file={cred.key_file}"]
        argv += [f"ca_file={cred.server_ca}", "server_name=localhost"]
    out, seconds = await _run(argv, done=lambda _o: False)
    alert = _first_int(r"fatal alert message \(msg (\d+)\)", out)
    accepted = "[ Ciphersuite is" in out and "mbedtls_ssl_handshake returned" not in out
    return PeerRun(accepted, alert, seconds, out)


async def tinydtls_dtls_client(cred: Credential, port: int, workdir: Path) -> PeerRun:
    assert cred.kind == "psk"
    (workdir / "psk-id").write_text(cred.identity)
    (workdir / "psk-key").write_bytes(cred.key)
    argv = [peer("dtls_client"), "-i", str(workdir / "psk-id"), "-k", str(workdir / "psk-key")]
    argv += ["-v", "6", LOOPBACK, str(port)]

    def done(o: str) -> bool:
        return "Handshake complete" in o or "ALRT" in o

    out, seconds = await _run(argv, done=done, keep_stdin_open=True)
    alert = _first_int(r"ALRT (\d+)", out)
    return PeerRun("Handshake complete" in out, alert, seconds, out)


def _wakaama_alert(out: str) -> int | None:
    """Wakaama hex-dumps each datagram it receives: find a fatal alert record (0x15 FE FD,
    then level 2 and the description at offsets 13 and 14)."""
    for block in re.split(r"\d+ bytes received from", out)[1:]:
        hexes = re.findall(r"(?m)^((?:[0-9A-F]{2} {1,2}){1,16})", block)
        data = bytes.fromhex("".join(hexes).replace(" ", ""))
        if len(data) >= 15 and data[:3] == b"\x15\xfe\xfd" and data[13] == 2:
            return data[14]
    return None


async def wakaama_lwm2mclient(cred: Credential, port: int, endpoint: str) -> PeerRun:
    assert cred.kind == "psk"

    def done(o: str) -> bool:
        return "STATE_READY" in o or _wakaama_alert(o) is not None or "Failed to open" in o

    for _ in range(3):  # its local port (-l) is ours to pick: another may take it first
        # Its state lines go to stdout, block-buffered into a pipe: line-buffer them.
        argv = [_binary("stdbuf"), "-oL", peer("lwm2mclient_tinydtls"), "-4", "-h", LOOPBACK]
        argv += ["-p", str(port), "-l", str(free_udp_port()), "-n", endpoint]
        argv += ["-i", cred.identity, "-s", cred.key.hex(), "-t", "60"]
        # It reads commands from stdin and quits on EOF: keep it open.
        out, seconds = await _run(argv, done=done, keep_stdin_open=True)
        if "Failed to open socket" not in out:
            break
    return PeerRun("STATE_READY" in out, _wakaama_alert(out), seconds, out)


async def aiocoap_tinydtls(cred: Credential, port: int) -> PeerRun:
    from aiocoap import Context, Message
    from aiocoap.numbers.codes import Code

    assert cred.kind == "psk"
    ctx = await Context.create_client_context(transports=["tinydtls"])
    uri = f"coaps://{LOOPBACK}:{port}"
    ctx.client_credentials.load_from_dict(
        {
            f"{uri}/*": {
                "dtls": {
                    "psk": {"hex": cred.key.hex()},
                    "client-identity": {"ascii": cred.identity},
                }
            }
        }
    )
    t0 = time.monotonic()
    try:
        request = Message(code=Code.POST, uri=f"{uri}/up/event", payload=b"x")
        response = await asyncio.wait_for(ctx.request(request).response, RUN_TIMEOUT)
        return PeerRun(response.code == Code.CHANGED, None, time.monotonic() - t0, str(response))
    except Exception as exc:  # the FatalDTLSError(alert) arrives wrapped in a NetworkError
        alert = _first_int(r"^(\d+)$", str(exc.__cause__ or exc))
        return PeerRun(False, alert, time.monotonic() - t0, repr(exc))
    finally:
        await ctx.shutdown()


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


async def run_peer(
    client: str, cred: Credential, port: int, *, workdir: Path, endpoint: str = ""
) -> PeerRun:
    if client in ("coap-client-openssl", "coap-client-gnutls"):
        return await coap_client(client, cred, port)
    if client == "openssl s_client":
        return await openssl_s_client(cred, port)
    if client == "gnutls-cli":
        return await gnutls_cli(cred, port)
    if client == "mbedTLS ssl_client2":
        return await mbedtls_ssl_client2(cred, port)
    if client == "tinydtls dtls-client":
        return await tinydtls_dtls_client(cred, port, workdir)
    if client == "Wakaama lwm2mclient_tinydtls":
        return await wakaama_lwm2mclient(cred, port, endpoint)
    if client == "aiocoap + DTLSSocket":
        return await aiocoap_tinydtls(cred, port)
    raise ValueError(client)
