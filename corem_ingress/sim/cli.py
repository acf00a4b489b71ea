"""`corem-ingress simulate`: build the fleet from the arguments and run it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Any

from corem_ingress.config import Config
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.devices import HttpDevice, MqttDevice, Target, client_tls_context
from corem_ingress.sim.fleet import Fleet, FleetSpec, SimDevice
from corem_ingress.sim.provision import SimCredential, SimProvisioner, load_ca
from corem_ingress.sim.stats import render_table

#: Which credential kinds each transport's device side speaks.
SUPPORTED = {
    "http": ("api_key",),
    "mqtt": ("x509", "api_key"),
    "coap": ("psk", "x509"),
    "lwm2m": ("psk", "x509"),
}


class SimUsageError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", required=True, choices=["mqtt", "coap", "lwm2m", "http"])
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--ramp", type=float, default=50.0, help="devices started per second")
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--credential", choices=[k.value for k in CredentialKind])
    p.add_argument("--provision", action="store_true", help="create (or reuse) the devices")
    p.add_argument("--revoke-fraction", type=float, default=0.0)
    p.add_argument("--report", help="write the JSON summary here")
    p.add_argument("--tenant", default="sim")
    p.add_argument("--host", help="override the configured listener host (loopback only)")
    p.add_argument("--port", type=int, help="override the configured listener port")
    p.add_argument("--server-ca", default="certs-dev/ca.pem", help="CA of the broker's TLS cert")
    p.add_argument("--ca-cert", default="certs-dev/ca.pem", help="CA that signs x509 devices")
    p.add_argument("--ca-key", default="certs-dev/ca.key")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument(
        "--cid",
        type=int,
        metavar="BYTES",
        help="coap: devices ask for a DTLS Connection ID (RFC 9146) of this many bytes "
        "(0: offer the extension, ask the server to send none); OpenSSL devices",
    )
    p.add_argument(
        "--rebind-every",
        type=float,
        default=0.0,
        metavar="S",
        help="coap: each device's NAT rebinds (new source port) every S seconds; "
        "without a CID the device handshakes again",
    )


def _target(cfg: Config, args: argparse.Namespace) -> Target:
    section: Any = {"http": cfg.http, "mqtt": cfg.mqtt, "coap": cfg.coap, "lwm2m": cfg.coap}[
        args.transport
    ]
    host: str = section.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all listener is reached on loopback
        host = "127.0.0.1"
    if args.host:
        try:
            infos = {i[4][0] for i in socket.getaddrinfo(args.host, None)}
        except OSError:
            raise SimUsageError(f"--host {args.host!r} does not resolve") from None
        if not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in infos):
            raise SimUsageError(
                "--host must be a loopback address: the simulator only loads the configured broker"
            )
        host = args.host
    return Target(host, args.port or section.port, args.server_ca)


def _dtls_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CoAP devices' ``cid``/``rebind_every_s`` ({} when neither is asked for)."""
    if args.cid is None and not args.rebind_every:
        return {}
    if args.transport != "coap":
        raise SimUsageError("--cid and --rebind-every apply to --transport coap only")
    if args.cid is not None and not 0 <= args.cid <= 32:
        raise SimUsageError("--cid must be 0..32 bytes (RFC 9146 allows up to 255; we cap it)")
    if args.rebind_every < 0:
        raise SimUsageError("--rebind-every must be >= 0 seconds")
    return {"cid": args.cid, "rebind_every_s": args.rebind_every}


def _device_factory(
    transport: str,
    kind: CredentialKind,
    target: Target,
    creds: list[SimCredential],
    dtls: dict[str, Any] | None = None,
) -> Any:
    dtls = dtls or {}

    def make(i: int) -> SimDevice:
        c = creds[i]
        name = c.hardware_id
        if transport == "http":
            assert c.api_key
            return HttpDevice(name, target, c.device_id, c.api_key)
        if transport == "mqtt":
            if kind is CredentialKind.X509:
                tls = client_tls_context(target.server_ca, c.cert_path, c.key_path)
                return MqttDevice(name, target, c.device_id, tls=tls)
            return MqttDevice(
                name,
                target,
                c.device_id,
                tls=client_tls_context(target.server_ca),
                api_key=c.api_key,
            )
        if transport == "coap" and kind is CredentialKind.X509:
            from corem_ingress.sim.coap_devices import CoapCertDevice

            assert c.cert_path and c.key_path
            return CoapCertDevice(name, target, c.cert_path, c.key_path, **_with_cid(dtls, i))
        if transport == "coap" and dtls:
            from corem_ingress.sim.coap_devices import CoapOpenSslPskDevice

            assert c.psk_identity and c.psk_hex
            psk = bytes.fromhex(c.psk_hex)
            return CoapOpenSslPskDevice(name, target, c.psk_identity, psk, **_with_cid(dtls, i))
        if transport == "coap":
            from corem_ingress.sim.coap_devices import psk_device

            assert c.psk_identity and c.psk_hex
            return psk_device(name, target, c.psk_identity, bytes.fromhex(c.psk_hex))
        if transport == "lwm2m":
            from corem_ingress.sim.lwm2m_device import Lwm2mDevice

            return Lwm2mDevice(
                name,
                target,
                endpoint=c.hardware_id,
                psk_identity=c.psk_identity,
                psk=bytes.fromhex(c.psk_hex) if c.psk_hex else None,
                cert_file=c.cert_path,
                key_file=c.key_path,
            )
        raise SimUsageError(f"transport {transport} is not supported by the simulator yet")

    return make


def _with_cid(dtls: dict[str, Any], i: int) -> dict[str, Any]:
    """Device ``i``'s options: its own CID (distinct per device: index, then zeros)."""
    if dtls.get("cid") is None:
        return dtls
    n = dtls["cid"]
    return {**dtls, "cid": (i.to_bytes(8, "big")[-n:] if n <= 8 else i.to_bytes(n, "big"))}


def _device_stack(
    transport: str, kind: CredentialKind, creds: list[SimCredential], dtls: bool = False
) -> str:
    """The client library the devices run (for the summary: a reader must know what spoke)."""
    if transport == "coap" and kind is CredentialKind.PSK and dtls:
        return "openssl (--cid/--rebind-every: the OpenSSL device)"
    if transport == "coap" and kind is CredentialKind.PSK:
        from corem_ingress.sim.coap_devices import TINYDTLS_MAX_PSK, psk_device_stack

        stacks = {psk_device_stack(bytes.fromhex(c.psk_hex or "")) for c in creds}
        if stacks == {"openssl"}:
            return f"openssl (the PSKs are longer than tinydtls's {TINYDTLS_MAX_PSK} bytes)"
        return " + ".join(sorted(stacks))
    return {
        "http": "aiohttp",
        "mqtt": "asyncio ssl + MQTT 3.1.1",
        "coap": "openssl",
        "lwm2m": "openssl (sim/lwm2m_device.py)",
    }[transport]


async def run(cfg: Config, args: argparse.Namespace, registry: Any) -> dict[str, object]:
    default_kind = {"http": "api_key", "mqtt": "x509", "coap": "psk", "lwm2m": "psk"}
    kind = CredentialKind(args.credential or default_kind[args.transport])
    if args.transport not in SUPPORTED or kind.value not in SUPPORTED[args.transport]:
        raise SimUsageError(
            f"the simulator has no {args.transport} device with {kind.value} credentials yet "
            f"(supported: {json.dumps(SUPPORTED)})"
        )
    spec = FleetSpec(
        devices=args.devices,
        ramp_per_s=args.ramp,
        rate_per_device=args.rate,
        duration_s=args.duration,
        revoke_fraction=args.revoke_fraction,
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise SimUsageError(str(exc)) from None
    target = _target(cfg, args)
    dtls = _dtls_options(args)
    ca = None
    if kind is CredentialKind.X509:
        try:
            ca = load_ca(args.ca_cert, args.ca_key)
        except (OSError, ValueError) as exc:
            raise SimUsageError(f"cannot load the device CA: {exc}") from None
    prov = SimProvisioner(registry, args.tenant, kind, Path(cfg.state_dir) / "sim", ca=ca)
    if args.provision:
        creds = await prov.ensure(args.devices)
    else:
        saved = list(prov._load().values())
        if len(saved) < args.devices:
            raise SimUsageError(
                f"only {len(saved)} simulated {kind.value} devices are provisioned: add --provision"
            )
        creds = sorted(saved, key=lambda c: c.index)[: args.devices]

    async def revoke(i: int) -> float:
        return await prov.revoke(creds[i])

    fleet = Fleet(
        spec,
        _device_factory(args.transport, kind, target, creds, dtls),
        revoke=revoke,
        progress=None if args.quiet else sys.stderr,
    )
    summary = await fleet.run()
    summary = {
        "transport": args.transport,
        "credential": kind.value,
        "devices": args.devices,
        "device_stack": _device_stack(args.transport, kind, creds, bool(dtls)),
        "target": f"{target.host}:{target.port}",
        **summary,
    }
    if dtls:
        summary["dtls"] = {
            "cid_bytes": args.cid,
            "rebind_every_s": args.rebind_every,
            "cid_sessions": sum(bool(getattr(d, "cid_negotiated", False)) for d in fleet.devices),
            "handshakes": sum(getattr(d, "handshakes", 0) for d in fleet.devices),
            "rebindings": sum(getattr(d, "rebindings", 0) for d in fleet.devices),
        }
    if not args.quiet:
        sys.stderr.write("\n")
    return summary


def print_summary(summary: dict[str, object], report: str | None) -> None:
    sys.stdout.write(render_table(summary) + "\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    if report:
        Path(report).write_text(json.dumps(summary, indent=2) + "\n")
