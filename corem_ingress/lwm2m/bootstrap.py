"""LwM2M Bootstrap (OMA LwM2M 1.1 core, 6.1), the server's side, pure: what a
Bootstrap-Request asks for, and the requests that configure the device.

After the device's ``POST /bs?ep=<endpoint>`` (answered 2.04), the bootstrap server sends:

1. Bootstrap-Delete ``/``: every instance but the bootstrap server's own Security one;
2. Bootstrap-Write ``/0/<i>``: a Security instance for the device-management server (its
   URI, PSK mode, the device's own PSK identity and key, its Short Server ID);
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
    psk_identity: str,
    psk: bytes,
    short_server_id: int = 1,
    lifetime_s: int = 300,
    binding: str = "U",
) -> list[BootstrapStep]:
    """The sequence after a Bootstrap-Request (module doc)."""
    if not server_uri.startswith("coaps://"):
        raise InvalidArgument("the device-management server URI must be coaps://")
    if not 1 <= short_server_id <= 65534:
        raise InvalidArgument("short server id must be 1..65534")
    if lifetime_s < 1:
        raise InvalidArgument("lifetime must be >= 1 s")
    security = f"/0/{SECURITY_INSTANCE}"
    server = f"/1/{SERVER_INSTANCE}"
    security_payload = _senml(
        security,
        [
            (0, "vs", server_uri),
            (1, "vb", False),  # not a bootstrap server
            (2, "v", SECURITY_MODE_PSK),
            (3, "vd", psk_identity.encode()),
            (4, "vd", b""),
            (5, "vd", psk),
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
