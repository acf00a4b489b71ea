"""LwM2M Bootstrap (OMA LwM2M 1.1 core, 6.1), the server's side, pure: what a
Bootstrap-Request asks for, and the requests that configure the device.

After the device's ``POST /bs?ep=<endpoint>`` (answered 2.04), the bootstrap server sends:

1. Bootstrap-Delete ``/``: every instance but the bootstrap server's own Security one;
2. Bootstrap-Write ``/0/<i>``: a Security instance for the device-management server (its
   URI, the device's own credential, its Short Server ID): PSK mode with the device's PSK
   identity and key, or Certificate mode with the device's own certificate (resource 3) and
   the server's (resource 4); a device's private key (resource 5) is never written there:
   the server never holds it, the device keeps the key it authenticated with;
3. Bootstrap-Write ``/1/<i>``: the Server instance (Short Server ID, lifetime, binding);
4. Bootstrap-Finish ``POST /bs``.

Payloads are SenML JSON (ct=110, what every LwM2M 1.1 client reads; Wakaama has no TLV
unless built with it). Opaque values go as standard base64 with padding, which Wakaama's
decoder (and RFC 4648 lenient ones) read; RFC 8428's base64url would break Wakaama.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import check_hardware_id

CF_SENML_JSON = 110
#: Instance ids of what is written (the bootstrap server's own Security instance is 0 in
#: most clients; instance 1 never collides with it).
SECURITY_INSTANCE = 1
SERVER_INSTANCE = 1
SECURITY_MODE_PSK = 0
SECURITY_MODE_CERTIFICATE = 2


@dataclass(frozen=True, slots=True)
class BootstrapStep:
    """One server-initiated request of the bootstrap sequence."""

    method: str  # DELETE, PUT, POST
    uri_path: tuple[str, ...]
    payload: bytes = b""
    content_format: int | None = None


def endpoint_of(query: list[str] | tuple[str, ...]) -> str:
    """The endpoint name of a Bootstrap-Request's ``ep=`` query (InvalidArgument otherwise).

    It is the device's hardware_id: it must be one."""
    eps = [q[3:] for q in query if q.startswith("ep=")]
    if len(eps) != 1 or not eps[0]:
        raise InvalidArgument("Bootstrap-Request needs exactly one ep= query")
    return check_hardware_id(eps[0])


def _senml(base: str, items: list[tuple[int, str, object]]) -> bytes:
    out = []
    for resource, kind, value in items:
        item: dict[str, object] = {"n": f"{base}/{resource}"}
        if kind == "vd":
            assert isinstance(value, bytes)
            item["vd"] = base64.b64encode(value).decode()
        else:
            item[kind] = value
        out.append(item)
    return json.dumps(out, separators=(",", ":")).encode()


def bootstrap_steps(
    *,
    server_uri: str,
    psk_identity: str = "",
    psk: bytes = b"",
    client_certificate: bytes | None = None,
    server_certificate: bytes = b"",
    short_server_id: int = 1,
    lifetime_s: int = 300,
    binding: str = "U",
) -> list[BootstrapStep]:
    """The sequence after a Bootstrap-Request (module doc): Certificate mode when
    ``client_certificate`` (DER) is given (then ``server_certificate``, DER, is needed),
    else PSK mode."""
    if not server_uri.startswith("coaps://"):
        raise InvalidArgument("the device-management server URI must be coaps://")
    if not 1 <= short_server_id <= 65534:
        raise InvalidArgument("short server id must be 1..65534")
    if lifetime_s < 1:
        raise InvalidArgument("lifetime must be >= 1 s")
    security = f"/0/{SECURITY_INSTANCE}"
    server = f"/1/{SERVER_INSTANCE}"
    credential: list[tuple[int, str, object]]
    if client_certificate is not None:
        if not client_certificate or not server_certificate:
            raise InvalidArgument("certificate mode needs the device's and the server's")
        credential = [
            (2, "v", SECURITY_MODE_CERTIFICATE),
            (3, "vd", client_certificate),
            (4, "vd", server_certificate),
        ]
    else:
        if not psk_identity or not psk:
            raise InvalidArgument("PSK mode needs the identity and the key")
        credential = [
            (2, "v", SECURITY_MODE_PSK),
            (3, "vd", psk_identity.encode()),
            (4, "vd", b""),
            (5, "vd", psk),
        ]
    security_payload = _senml(
        security,
        [
            (0, "vs", server_uri),
            (1, "vb", False),  # not a bootstrap server
            *credential,
            (10, "v", short_server_id),
        ],
    )
    server_payload = _senml(
        server,
        [
            (0, "v", short_server_id),
            (1, "v", lifetime_s),
            (6, "vb", False),
            (7, "vs", binding),
        ],
    )
    return [
        BootstrapStep("DELETE", ()),
        BootstrapStep("PUT", ("0", str(SECURITY_INSTANCE)), security_payload, CF_SENML_JSON),
        BootstrapStep("PUT", ("1", str(SERVER_INSTANCE)), server_payload, CF_SENML_JSON),
        BootstrapStep("POST", ("bs",)),
    ]


@dataclass
class BootstrappedServer:
    """What a client keeps of a bootstrap (the device-management server's settings)."""

    server_uri: str = ""
    security_mode: int = SECURITY_MODE_PSK
    psk_identity: str = ""
    psk: bytes = b""
    client_certificate: bytes = b""
    server_certificate: bytes = b""
    lifetime_s: int = 0

    @property
    def has_credential(self) -> bool:
        if self.security_mode == SECURITY_MODE_CERTIFICATE:
            return bool(self.client_certificate and self.server_certificate)
        return bool(self.psk_identity and self.psk)


class BootstrapClient:
    """The client's side of the sequence (the simulator's LwM2M device): takes the server's
    Bootstrap-Delete / Write / Finish requests and answers each with a CoAP code."""

    def __init__(self) -> None:
        self.server = BootstrappedServer()
        self.finished = False

    def handle(self, method: str, uri_path: tuple[str, ...], payload: bytes) -> str:
        if method == "DELETE":
            return "2.02"
        if method == "POST" and uri_path == ("bs",):
            server = self.server
            complete = bool(server.server_uri and server.has_credential and server.lifetime_s)
            self.finished = complete
            return "2.04" if complete else "4.06"  # Finish on an inconsistent configuration
        if method != "PUT" or len(uri_path) != 2 or uri_path[0] not in ("0", "1"):
            return "4.05"
        try:
            values = {
                str(item["n"]).rsplit("/", 1)[-1]: item
                for item in json.loads(payload)
                if isinstance(item, dict)
            }
            if uri_path[0] == "0":
                if values["1"].get("vb"):
                    return "2.04"  # the bootstrap server's own instance
                self.server.server_uri = str(values["0"]["vs"])
                mode = int(values["2"]["v"])
                self.server.security_mode = mode
                if mode == SECURITY_MODE_CERTIFICATE:
                    self.server.client_certificate = base64.b64decode(values["3"]["vd"])
                    self.server.server_certificate = base64.b64decode(values["4"]["vd"])
                elif mode == SECURITY_MODE_PSK:
                    self.server.psk_identity = base64.b64decode(values["3"]["vd"]).decode()
                    self.server.psk = base64.b64decode(values["5"]["vd"])
                else:
                    return "4.00"  # a mode this client does not hold keys for
            else:
                self.server.lifetime_s = int(values["1"]["v"])
        except (KeyError, TypeError, ValueError):
            return "4.00"
        return "2.04"
