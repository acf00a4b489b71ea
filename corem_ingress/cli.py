"""`corem-ingress`: serve, and the operator commands. JSON on stdout.

Bad input: one line on stderr, exit 2. Server-side failure (e.g. Redis
unreachable): one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import redis.exceptions as redis_exceptions

from corem_ingress import config as config_mod
from corem_ingress import event_loop
from corem_ingress.core.errors import IngressError, InvalidArgument, Unavailable
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.psk import KeyRing, SealedPsk, generate_kek_line, parse_psk_hex
from corem_ingress.state_dir import CONFIG_PATH_FILE, KEK_PATH_FILE, REDIS_URL_FILE

PROG = "corem-ingress"
EXIT_USAGE = 2
EXIT_SERVER = 1


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')")


def _out(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _config_path(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None) or os.environ.get("COREM_CONFIG") or None


def _load_config(args: argparse.Namespace) -> config_mod.Config:
    """The config named by --config / COREM_CONFIG; else, when Redis comes from the state dir
    (a broker running on the embedded dev Redis), the config file that broker was started
    with, as it recorded in the same state dir: the CLI then applies the broker's settings
    (API key overlap and its maximum, PSK minimum, ...), not the defaults."""
    path = _config_path(args)
    cfg = config_mod.load(path)
    if path is not None or cfg.redis.url:
        return cfg
    state = Path(cfg.state_dir)
    try:
        recorded = (state / CONFIG_PATH_FILE).read_text().strip()
    except OSError:
        return cfg  # no dev broker, or one started without a config file
    try:
        return config_mod.load(recorded)
    except config_mod.ConfigError as exc:
        raise CliError(f"{exc} (the broker's config, found through {state}/)") from None


def _redis_url(cfg: config_mod.Config) -> str:
    if cfg.redis.url:
        return cfg.redis.url
    state = Path(cfg.state_dir) / REDIS_URL_FILE
    try:
        return state.read_text().strip()
    except OSError:
        # Name the file looked for: a dev broker may well run, from another directory.
        raise CliError(
            "no Redis configured: set COREM_REDIS_URL (or redis.url), or start "
            "'corem-ingress serve' with the embedded Redis first (no "
            f"{state.absolute()}: run the CLI where the broker runs)",
            EXIT_SERVER,
        ) from None


class _DevKeyRing(KeyRing):
    """The dev broker's KEK, found through the state dir: says so on stderr when first used."""

    source = ""
    _announced = False

    def _announce(self) -> None:
        if not self._announced:
            self._announced = True
            sys.stderr.write(f"{PROG}: note: using the PSK KEK file {self.source}\n")

    def seal(self, tenant_id: str, identity: str, psk: bytes) -> SealedPsk:
        self._announce()
        return super().seal(tenant_id, identity, psk)

    def open(self, tenant_id: str, identity: str, sealed: SealedPsk) -> bytes:
        self._announce()
        return super().open(tenant_id, identity, sealed)


def _keyring(cfg: config_mod.Config) -> KeyRing | None:
    """The configured KEK (COREM_PSK_KEK, COREM_PSK_KEK_FILE, credentials.psk_kek_file); else,
    only when Redis comes from the state dir (a broker running on the embedded dev Redis),
    the KEK file that broker was started with, as it recorded in the same state dir.
    With a configured Redis (production) the KEK must be configured explicitly."""
    keyring = cfg.load_keyring()
    if keyring is not None or cfg.redis.url:
        return keyring
    state = Path(cfg.state_dir)
    try:
        kek_path = Path((state / KEK_PATH_FILE).read_text().strip())
    except OSError:
        return None  # that broker has no KEK file (or none runs): PSK commands will say so
    source = f"{kek_path} (of the broker on the embedded Redis, found through {state}/)"
    try:
        text = kek_path.read_text()
    except OSError as exc:
        raise CliError(f"PSK KEK file {source}: cannot read: {exc.strerror}", EXIT_SERVER) from None
    try:
        ring = _DevKeyRing.parse(text)
    except Exception as exc:  # messages never contain key material
        raise CliError(f"PSK KEK file {source}: {exc}", EXIT_SERVER) from None
    assert isinstance(ring, _DevKeyRing)
    ring.source = source
    return ring


def _read_pem(value: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    if value == "-":
        return sys.stdin.read()
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise CliError(f"--cert: cannot read {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--cert: {value} is not a PEM text file") from None


def _proof(args: argparse.Namespace) -> Any:
    """The proof of possession given with --challenge/--signature or --csr (or None)."""
    from corem_ingress.core.proof import Proof

    challenge, signature, csr = args.challenge, args.signature, args.csr
    if csr is not None:
        if challenge is not None or signature is not None:
            raise CliError("give either --csr or --challenge with --signature")
        return Proof.from_csr(_read_text(csr, "--csr"))
    if (challenge is None) != (signature is None):
        raise CliError("--challenge and --signature go together")
    if challenge is None:
        return None
    return Proof.from_signature(challenge, signature)


def _read_text(value: str, option: str) -> str:
    if value == "-":
        return sys.stdin.read()
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise CliError(f"{option}: cannot read {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{option}: {value} is not a text file") from None


async def _with_registry(
    args: argparse.Namespace, op: Callable[[Any], Awaitable[object]]
) -> object:
    from corem_ingress.store.connection import redis_client
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry

    cfg = _load_config(args)
    url = _redis_url(cfg)
    keyring = _keyring(cfg)
    client = redis_client(url, socket_timeout=cfg.redis.socket_timeout_s)
    try:
        registry = Registry(
            client,
            KeySchema(cfg.redis.key_prefix),
            keyring=keyring,
            api_key_overlap=cfg.credentials.api_key_overlap_s,
            api_key_overlap_max=cfg.credentials.api_key_overlap_max_s,
            psk_min_bytes=cfg.credentials.psk_min_bytes,
        )
        return await op(registry)
    finally:
        await client.aclose()


# -- commands -------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from corem_ingress import logs
    from corem_ingress.app import serve

    path = _config_path(args)  # never another broker's, from the state dir
    cfg = config_mod.load(path)
    logs.configure(cfg.logging.format, cfg.logging.level, cfg.node_id)
    try:
        factory = event_loop.loop_factory(cfg.event_loop)
    except event_loop.EventLoopUnavailable as exc:
        print(f"corem-ingress: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(cfg, config_file=path))
    return 0


def _registry_command(
    build: Callable[[argparse.Namespace], Callable[[Any], Awaitable[object]]],
    out: Callable[[object], None] = _out,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result = asyncio.run(_with_registry(args, build(args)))
        out(result)
        return 0

    return run


def _provision(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    kind = CredentialKind.parse(args.credential)
    pem = _read_pem(args.cert) if args.cert else None
    psk = parse_psk_hex(args.psk_hex) if args.psk_hex else None
    given = _proof(args)

    async def op(reg: Any) -> object:
        res = await reg.provision(
            args.tenant,
            args.hardware_id,
            kind,
            actor=_actor(),
            cert_pem=pem,
            psk_identity=args.psk_identity,
            psk_bytes=psk,
            proof_of_possession=given,
        )
        return res.to_json()

    return op


def _device_json(device: Any, creds: list[Any]) -> dict[str, object]:
    out: dict[str, object] = device.to_json()
    now = time.time()
    out["credentials"] = [c.to_json(now) for c in creds]
    return out


def _devices_get(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        device = await reg.get_device(args.tenant, args.device)
        return _device_json(device, await reg.credentials(args.tenant, args.device))

    return op


def _devices_list(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        if args.hardware_id:
            device = await reg.find_device(args.tenant, args.hardware_id)
            return {"devices": [device.to_json()], "next_cursor": None}
        devices, cursor = await reg.list_devices(args.tenant, limit=args.limit, cursor=args.cursor)
        return {"devices": [d.to_json() for d in devices], "next_cursor": cursor}

    return op


def _keys_create(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        issued = await reg.create_api_key(args.tenant, args.device, actor=_actor())
        return issued.to_json()

    return op


def _keys_list(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    """The device's API keys, active and past: the records the admin API lists in
    ``GET /api/v1/devices/{device_id}`` (``credentials``), same fields."""

    async def op(reg: Any) -> object:
        creds = await reg.credentials(args.tenant, args.device)
        now = time.time()
        keys = [c.to_json(now) for c in creds if c.kind is CredentialKind.API_KEY]
        return {"device_id": args.device, "keys": keys}

    return op


def _keys_rotate(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        issued = await reg.rotate_api_key(
            args.tenant, args.key_id, actor=_actor(), device_id=args.device, overlap=args.overlap
        )
        return issued.to_json()

    return op


def _keys_revoke(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        rec = await reg.revoke_api_key(
            args.tenant, args.key_id, actor=_actor(), device_id=args.device
        )
        return rec.to_json(time.time())

    return op


def _psk_rotate(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    psk = parse_psk_hex(args.psk_hex) if args.psk_hex else None

    async def op(reg: Any) -> object:
        issued = await reg.rotate_psk(
            args.tenant, args.device, actor=_actor(), psk_identity=args.psk_identity, psk_bytes=psk
        )
        return {
            "device_id": issued.device_id,
            "credential_id": issued.credential_id,
            "psk_identity": issued.psk_identity,
            "psk": issued.psk.hex(),
        }

    return op


def _psk_revoke(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        return (await reg.revoke_psk(args.tenant, args.device, actor=_actor())).to_json(time.time())

    return op


def _psk_reseal(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        return {"resealed": await reg.reseal_psks(actor=_actor())}

    return op


def _certs_register(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    pem = _read_pem(args.cert)
    given = _proof(args)

    async def op(reg: Any) -> object:
        rec = await reg.register_cert(
            args.tenant, args.device, pem, actor=_actor(), proof_of_possession=given
        )
        return rec.to_json(time.time())

    return op


def _certs_challenge(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        return (await reg.new_challenge(args.tenant, actor=_actor())).to_json()

    return op


def _certs_check_issuers(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        return await reg.check_issuers(args.tenant)

    return op


def cmd_sign_challenge(args: argparse.Namespace) -> int:
    """Device side, no Redis: sign a challenge with a private key (the key stays here)."""
    import base64

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from corem_ingress.core.proof import sign_challenge

    try:
        key: Any = load_pem_private_key(Path(args.key).read_bytes(), password=None)
    except OSError as exc:
        raise CliError(f"--key: cannot read {args.key}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise CliError(f"--key: {args.key} is not an unencrypted PEM private key") from None
    try:
        signature = sign_challenge(key, args.challenge)
    except (TypeError, AttributeError):
        raise CliError("--key: key type not supported (EC, RSA or Ed25519)") from None
    _out({"challenge": args.challenge, "signature": base64.b64encode(signature).decode()})
    return 0


def _cas_add(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    pem = _read_pem(args.cert)

    async def op(reg: Any) -> object:
        # The CLI talks to Redis directly: its user is a platform operator, trusted to add
        # a CA without proof of possession (the admin API asks for one).
        record, added = await reg.add_ca(
            args.tenant, pem, actor=_actor(), require_device_proof=args.require_device_proof
        )
        return {"added": added, **record.to_json(time.time())}

    return op


def _cas_list(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        records, cursor = await reg.list_cas(args.tenant, limit=args.limit, cursor=args.cursor)
        now = time.time()
        return {"cas": [r.to_json(now) for r in records], "next_cursor": cursor}

    return op


def _cas_remove(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    if (args.cert is None) == (args.fingerprint is None):
        raise CliError("give either --cert or --fingerprint")
    fingerprint = args.fingerprint
    if args.cert is not None:
        from corem_ingress.core.certs import fingerprint_pem

        fingerprint = fingerprint_pem(_read_pem(args.cert))

    async def op(reg: Any) -> object:
        return (await reg.remove_ca(args.tenant, fingerprint, actor=_actor())).to_json(time.time())

    return op


def _claims_create(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    from corem_ingress.core.claims import ClaimKind, parse_expiry

    kind = ClaimKind.parse(args.kind)
    credential_kind = CredentialKind.parse(args.credential_kind)
    expires_at = parse_expiry(args.expires, now=time.time()) if args.expires else None
    psk = parse_psk_hex(args.psk_hex) if args.psk_hex else None

    async def op(reg: Any) -> object:
        issued = await reg.create_claim(
            args.tenant,
            kind,
            credential_kind,
            max_uses=args.max_uses,
            expires_at=expires_at,
            actor=_actor(),
            psk_bytes=psk,
        )
        return issued.to_json(time.time())

    return op


def _cas_auto_provision(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    from corem_ingress.core.jitp import JitpTemplate

    template = None
    if not args.off:
        metadata = {}
        for item in args.metadata or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise CliError("--metadata takes key=value")
            metadata[key] = value
        template = JitpTemplate.from_json(
            {
                "hardware_id_from": args.hardware_id_from,
                "san_prefix": args.san_prefix,
                "metadata": metadata,
                "allow_certificate_rotation": args.allow_certificate_rotation,
            }
        )

    async def op(reg: Any) -> object:
        result = await reg.set_auto_provision(
            args.tenant, args.fingerprint, template, actor=_actor()
        )
        return {
            "ca_fingerprint": args.fingerprint,
            "auto_provision": result is not None,
            "template": result.to_json() if result is not None else None,
        }

    return op


def _claims_list(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        found, cursor = await reg.list_claims(args.tenant, limit=args.limit, cursor=args.cursor)
        now = time.time()
        return {"claims": [c.to_json(now) for c in found], "next_cursor": cursor}

    return op


def _claims_revoke(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        claim = await reg.revoke_claim(args.tenant, args.claim, actor=_actor())
        return claim.to_json(time.time())

    return op


def _tenant_settings(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        if args.allow_self_signed is None:
            settings = await reg.tenant_settings(args.tenant)
        else:
            allowed = args.allow_self_signed == "on"
            settings = await reg.set_allow_self_signed(args.tenant, allowed, actor=_actor())
        return {"tenant_id": args.tenant, **settings.to_json()}

    return op


def _certs_revoke(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        return (await reg.revoke_cert(args.tenant, args.fingerprint, actor=_actor())).to_json(
            time.time()
        )

    return op


def _certs_list(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    async def op(reg: Any) -> object:
        records, cursor = await reg.list_certs(
            args.tenant, device_id=args.device, limit=args.limit, cursor=args.cursor
        )
        now = time.time()
        return {"certs": [r.to_json(now) for r in records], "next_cursor": cursor}

    return op


def _downlink(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    from corem_ingress.core import json_text

    try:
        payload: Any = json_text.loads(args.payload) if args.json else args.payload
    except json_text.JsonTextError as exc:
        raise CliError(f"--payload {exc.reason} (drop --json to send it as text)") from None

    full = _load_config(args)
    cfg = full.downlinks
    from corem_ingress import logs

    # The answer on stdout says what was dropped; logs (stderr) only for warnings.
    logs.configure(full.logging.format, "warning")

    async def op(reg: Any) -> object:
        from corem_ingress.store.downlinks import send_downlink

        return await send_downlink(
            reg,
            args.tenant,
            args.device,
            args.kind,
            payload,
            qos=args.qos,
            actor=_actor(),
            now=time.time(),
            expiry_s=args.expiry,
            queue_max=cfg.queue_max,
            reply_wait_s=cfg.reply_wait_s,
        )

    return op


def _one_line(data: object) -> None:
    """One JSON line, ``state`` first: what became of the downlink, readable at a glance."""
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def lwm2m_params(args: argparse.Namespace) -> dict[str, Any]:
    """The operation's parameters from the options of ``corem-ingress lwm2m <operation>``:
    the same body as the admin API's ``POST …/lwm2m/<operation>``."""
    params: dict[str, Any] = {}
    if getattr(args, "path", None) is not None:
        params["path"] = args.path
    if getattr(args, "paths", None) is not None:
        params["paths"] = [p.strip() for p in args.paths.split(",") if p.strip()]
    if getattr(args, "timeout", None) is not None:
        params["timeout_s"] = args.timeout
    if getattr(args, "deadline", None) is not None:
        params["deadline_s"] = args.deadline
    if getattr(args, "accept", None) is not None:
        params["accept"] = args.accept
    if getattr(args, "args", None):
        params["args"] = args.args
    if args.operation == "write-attributes":
        for attr in ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"):
            if getattr(args, attr) is not None:
                params[attr] = getattr(args, attr)
        if args.clear:
            params["clear"] = [c.strip() for c in args.clear.split(",") if c.strip()]
    if args.operation in ("write", "create", "write-composite"):
        try:
            values = json.loads(args.values)
        except ValueError:
            raise CliError("--values is not valid JSON") from None
        params["values"] = values if isinstance(values, list) else [values]
    if args.operation == "write":
        params["replace"] = not args.partial
    return params


def _lwm2m(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    """An LwM2M operation on a registered device, routed to the node holding its session."""
    params = lwm2m_params(args) if args.operation != "registration" else {}

    async def op(reg: Any) -> object:
        from corem_ingress.adapters.lwm2m.operator import OperatorCalls
        from corem_ingress.lwm2m.objects import load_model
        from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore
        from corem_ingress.store.lwm2m_queue import Lwm2mQueue

        cfg = _load_config(args)
        calls = OperatorCalls(
            reg,
            Lwm2mStore(reg._r, reg.keys, grace_s=cfg.lwm2m.expiry_grace_s),
            Lwm2mRouter(reg._r, reg.keys),
            default_timeout_s=cfg.lwm2m.request_timeout_s,
            queue=Lwm2mQueue(reg._r, reg.keys),
            queue_policy=cfg.lwm2m.queue_policy(),
            model=load_model(cfg.lwm2m.models_dir),
        )
        target = f"device={args.device}" if args.operation != "request" else f"request={args.id}"

        async def run() -> object:
            if args.operation == "request":
                return await calls.queued(args.tenant, args.id)
            if args.operation == "registration":
                return (await calls.registration(args.tenant, args.device)).to_json()
            return await calls.call(args.tenant, args.device, args.operation, params)

        return await _audited(reg, args.tenant, f"lwm2m.{args.operation}", target, run())

    return op


async def _audited(
    reg: Any, tenant: str, action: str, target: str, aw: Awaitable[object]
) -> object:
    """Await an operator action and write its audit record (OK or the error code)."""
    try:
        result = await aw
    except IngressError as exc:
        await reg._audit(_actor(), tenant, action, target, exc.code)
        raise
    await reg._audit(_actor(), tenant, action, target, "OK")
    return result


def _firmware(args: argparse.Namespace) -> Callable[[Any], Awaitable[object]]:
    """Firmware update (object 5): upload an image, start a campaign, view it."""
    data = b""
    if args.operation == "firmware-upload":
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None

    async def op(reg: Any) -> object:
        from corem_ingress.adapters.lwm2m.firmware_calls import FirmwareCalls
        from corem_ingress.store.firmware import FirmwareStore
        from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore

        cfg = _load_config(args)
        calls = FirmwareCalls(
            reg,
            Lwm2mStore(reg._r, reg.keys, grace_s=cfg.lwm2m.expiry_grace_s),
            Lwm2mRouter(reg._r, reg.keys),
            FirmwareStore(reg._r, reg.keys),
            max_bytes=cfg.lwm2m.firmware_max_bytes,
        )

        async def run() -> object:
            if args.operation == "firmware-upload":
                return await calls.upload(args.tenant, args.name, args.version, data)
            if args.operation == "firmware-list":
                return await calls.images(args.tenant)
            if args.operation == "firmware-update":
                return await calls.start(args.tenant, args.image, args.device, args.method)
            return await calls.campaign(args.tenant, args.id)

        return await _audited(reg, args.tenant, f"lwm2m.{args.operation}", "firmware", run())

    return op


def cmd_lwm2m_models(args: argparse.Namespace) -> int:
    """The object models the broker uses (shipped OMA objects + lwm2m.models_dir); no Redis."""
    from corem_ingress.lwm2m.objects import load_model

    cfg = _load_config(args)
    model = load_model(cfg.lwm2m.models_dir)
    if args.object is None:
        _out({"objects": [o.to_json(resources=False) for o in model.objects()]})
        return 0
    obj = model.object(args.object)
    if obj is None:
        raise CliError(f"no model of object {args.object}")
    _out(obj.to_json())
    return 0


def _follow(
    args: argparse.Namespace,
    run: Callable[[config_mod.Config, argparse.Namespace], Coroutine[Any, Any, None]],
) -> int:
    """A command that follows a tenant's stream (``--tenant``, ``--device``) until
    interrupted or its reader goes away."""
    from corem_ingress.core.identity import check_device_id, check_tenant_id

    check_tenant_id(args.tenant)
    if args.device is not None:
        check_device_id(args.device)
    cfg = _load_config(args)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(run(cfg, args))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow a tenant's uplink stream: one JSON object per line, as messages arrive."""
    return _follow(args, _tail)


async def _tail(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    from corem_ingress.store.connection import redis_client
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.uplinks import UplinkStore

    keys = KeySchema(cfg.redis.key_prefix)
    client = redis_client(_redis_url(cfg), socket_timeout=max(cfg.redis.socket_timeout_s, 5.0))
    try:
        start = "0"
        if not args.from_start:
            # The id of the newest entry now, not "$": "$" read again after an empty wait
            # would skip whatever arrived between two reads.
            newest: Any = await client.xrevrange(keys.uplink_stream(args.tenant), count=1)
            start = str(newest[0][0]) if newest else "0"
        store = UplinkStore(client, keys)
        shown = 0
        async for stream_id, uplink in store.follow(
            args.tenant, device_id=args.device, start=start
        ):
            line = uplink.to_json()
            line["stream_id"] = stream_id
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    finally:
        await client.aclose()


def cmd_sessions(args: argparse.Namespace) -> int:
    """Live sessions on every node (the sessions index), or an operator disconnect."""
    from corem_ingress.adapters.http.sessions_api import DISCONNECT_NOTE, TRANSPORTS
    from corem_ingress.core.identity import check_tenant_id

    check_tenant_id(args.tenant)
    if getattr(args, "transport", None) not in (None, *TRANSPORTS):
        raise CliError(f"--transport must be one of {', '.join(TRANSPORTS)}")
    cfg = _load_config(args)
    _out(asyncio.run(_sessions(cfg, args, DISCONNECT_NOTE)))
    return 0


async def _sessions(cfg: config_mod.Config, args: argparse.Namespace, note: str) -> object:
    from corem_ingress.store.connection import redis_client
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.registry import Registry
    from corem_ingress.store.sessions_index import SessionsIndex

    keys = KeySchema(cfg.redis.key_prefix)
    client = redis_client(_redis_url(cfg), socket_timeout=cfg.redis.socket_timeout_s)
    index = SessionsIndex(client, keys, interval_s=cfg.sessions.index_interval_s or 1.0)
    try:
        if args.action == "list":
            sessions, truncated = await index.of_tenant(
                args.tenant, device_id=args.device, transport=args.transport, limit=args.limit
            )
            return {"sessions": sessions, "truncated": truncated}
        entry = await index.find(args.tenant, args.session)
        if entry is None:
            raise CliError(f"session {args.session} not found (not live, or not the tenant's)")
        await index.request_disconnect(entry)
        gone = await index.wait_gone(entry, 3.0)
        target = f"session={args.session} device={entry['device_id']} node={entry['node_id']}"
        registry = Registry(client, keys, keyring=None, api_key_overlap=0, api_key_overlap_max=0)
        await registry.audit(_actor(), args.tenant, "sessions.disconnect", target)
        return {"session": entry, "disconnected": gone, "revoked": False, "note": note}
    finally:
        await client.aclose()


def cmd_lwm2m_events(args: argparse.Namespace) -> int:
    """Follow a tenant's LwM2M events: one JSON object per line (with its ``id``)."""
    return _follow(args, _lwm2m_events)


async def _lwm2m_events(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    from corem_ingress.store.connection import redis_client
    from corem_ingress.store.keys import KeySchema
    from corem_ingress.store.lwm2m_events import Lwm2mEventLog

    client = redis_client(_redis_url(cfg), socket_timeout=max(cfg.redis.socket_timeout_s, 5.0))
    try:
        events = Lwm2mEventLog(client, KeySchema(cfg.redis.key_prefix))
        after = args.after if args.after is not None else await events.newest_id(args.tenant)
        shown = 0
        while args.count is None or shown < args.count:
            after, got = await events.read(args.tenant, after, device_id=args.device)
            for event_id, event in got:
                sys.stdout.write(json.dumps({"id": event_id, **event.to_json()}) + "\n")
                sys.stdout.flush()
                shown += 1
                if args.count is not None and shown >= args.count:
                    break
    finally:
        await client.aclose()


def cmd_simulate(args: argparse.Namespace) -> int:
    from corem_ingress.sim import cli as sim_cli

    async def op(reg: Any) -> object:
        return await sim_cli.run(_load_config(args), args, reg)

    try:
        summary = asyncio.run(_with_registry(args, op))
    except sim_cli.SimUsageError as exc:
        raise CliError(str(exc)) from None
    sim_cli.print_summary(summary, args.report)  # type: ignore[arg-type]
    stopped = summary.get("stopped_early") if isinstance(summary, dict) else None
    if stopped:
        raise CliError(f"simulate: {stopped}", EXIT_SERVER)
    return 0


def cmd_dev_certs(args: argparse.Namespace) -> int:
    from corem_ingress.devcerts import write_dev_certs

    _out(write_dev_certs(Path(args.out)))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from corem_ingress import __version__, compiled

    modules = compiled.build()
    why = compiled.why_pure()
    print(f"corem_ingress {__version__} (hot modules: {modules}{f'; {why}' if why else ''})")
    for name, kind in compiled.module_kinds().items():
        print(f"  {name}: {kind}")
    return 0


def cmd_kek_generate(args: argparse.Namespace) -> int:
    # Printed for the operator to put in a secret store; it is the only copy.
    sys.stdout.write(generate_kek_line(args.id) + "\n")
    return 0


# -- parser ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _event_id(text: str) -> str:
    """An LwM2M event id for ``--after`` (the API's Last-Event-ID, named as the option)."""
    from corem_ingress.lwm2m.events import check_event_id

    try:
        return check_event_id(text)
    except InvalidArgument:
        raise argparse.ArgumentTypeError(
            "must be an event id (e.g. 1700000000000-0) or 0"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds >= 0")
    return value


def build_parser(*, simulate: bool = True) -> argparse.ArgumentParser:
    """The parser; ``simulate=False`` leaves out the simulator's own options (importing the
    simulator costs most of the CLI's start-up, and only ``simulate`` needs it)."""
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand that is not given --config must not reset the one given before
    # it (``corem-ingress --config X serve``); argparse would write its default None over X.
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="YAML config file (or COREM_CONFIG)"
    )
    p = _Parser(prog=PROG, description="CORE-M IoT ingress broker", parents=[common])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", parents=[common], help="run all configured listeners")
    s.set_defaults(func=cmd_serve)

    def tenant(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tenant", required=True)

    def proof_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--challenge", help="proof of possession: a challenge (certs challenge)")
        sp.add_argument("--signature", help="proof: base64 signature of the challenge by the key")
        sp.add_argument("--csr", help="proof: CSR file made with the key, challenge inside")

    # devices
    devices = sub.add_parser("devices", help="provision and look up devices").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = devices.add_parser("provision", parents=[common])
    tenant(sp)
    sp.add_argument("--hardware-id", required=True)
    sp.add_argument("--credential", required=True, choices=[k.value for k in CredentialKind])
    sp.add_argument("--cert", help="device certificate PEM file (x509), or '-' for stdin")
    sp.add_argument("--psk-identity", help="PSK identity to assign (psk); generated if omitted")
    sp.add_argument("--psk-hex", help="PSK to assign, hex (psk); generated if omitted")
    proof_options(sp)
    sp.set_defaults(func=_registry_command(_provision))
    sp = devices.add_parser("get", parents=[common])
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=_registry_command(_devices_get))
    sp = devices.add_parser("list", parents=[common])
    tenant(sp)
    sp.add_argument("--hardware-id")
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.add_argument("--cursor")
    sp.set_defaults(func=_registry_command(_devices_list))

    # keys
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = keys.add_parser("create", parents=[common])
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=_registry_command(_keys_create))
    sp = keys.add_parser("list", parents=[common], help="the device's API keys (no secrets)")
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=_registry_command(_keys_list))
    sp = keys.add_parser("rotate", parents=[common])
    tenant(sp)
    sp.add_argument("--key-id", required=True)
    sp.add_argument("--device")
    sp.add_argument("--overlap", type=_seconds, help="seconds the old key keeps working")
    sp.set_defaults(func=_registry_command(_keys_rotate))
    sp = keys.add_parser("revoke", parents=[common])
    tenant(sp)
    sp.add_argument("--key-id", required=True)
    sp.add_argument("--device")
    sp.set_defaults(func=_registry_command(_keys_revoke))

    # psk
    psk = sub.add_parser("psk", help="pre-shared keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = psk.add_parser("rotate", parents=[common])
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.add_argument("--psk-identity")
    sp.add_argument("--psk-hex")
    sp.set_defaults(func=_registry_command(_psk_rotate))
    sp = psk.add_parser("revoke", parents=[common])
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=_registry_command(_psk_revoke))
    sp = psk.add_parser("reseal", parents=[common], help="re-seal all PSKs under the active KEK")
    sp.set_defaults(func=_registry_command(_psk_reseal))

    # certs
    certs = sub.add_parser("certs", help="device certificates").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = certs.add_parser("register", parents=[common])
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.add_argument("--cert", required=True, help="certificate PEM file, or '-' for stdin")
    proof_options(sp)
    sp.set_defaults(func=_registry_command(_certs_register))
    sp = certs.add_parser("revoke", parents=[common])
    tenant(sp)
    sp.add_argument("--fingerprint", required=True)
    sp.set_defaults(func=_registry_command(_certs_revoke))
    sp = certs.add_parser("list", parents=[common])
    tenant(sp)
    sp.add_argument("--device")
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.add_argument("--cursor")
    sp.set_defaults(func=_registry_command(_certs_list))
    sp = certs.add_parser(
        "challenge", parents=[common], help="a proof-of-possession challenge (single use)"
    )
    tenant(sp)
    sp.set_defaults(func=_registry_command(_certs_challenge))
    sp = certs.add_parser(
        "sign-challenge", parents=[common], help="sign a challenge with a key (local, no Redis)"
    )
    sp.add_argument("--key", required=True, help="the certificate's private key (PEM)")
    sp.add_argument("--challenge", required=True)
    sp.set_defaults(func=cmd_sign_challenge)
    sp = certs.add_parser(
        "check-issuers",
        parents=[common],
        help="list registered certificates whose issuer is not a CA of their tenant",
    )
    sp.add_argument("--tenant", help="only this tenant (default: every tenant)")
    sp.set_defaults(func=_registry_command(_certs_check_issuers))

    # tenant trust anchors
    cas = sub.add_parser("cas", help="a tenant's trust anchors (CA certificates)").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = cas.add_parser("add", parents=[common])
    tenant(sp)
    sp.add_argument("--cert", required=True, help="CA certificate PEM file, or '-' for stdin")
    sp.add_argument(
        "--require-device-proof",
        action="store_true",
        help="device certificates under this CA need proof of possession",
    )
    sp.set_defaults(func=_registry_command(_cas_add))
    sp = cas.add_parser("list", parents=[common])
    tenant(sp)
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.add_argument("--cursor")
    sp.set_defaults(func=_registry_command(_cas_list))
    sp = cas.add_parser("remove", parents=[common])
    tenant(sp)
    sp.add_argument("--cert", help="the CA certificate PEM file")
    sp.add_argument("--fingerprint", help="the CA's SHA-256 fingerprint")
    sp.set_defaults(func=_registry_command(_cas_remove))
    sp = cas.add_parser(
        "auto-provision", parents=[common], help="just-in-time provisioning with this CA"
    )
    tenant(sp)
    sp.add_argument("--fingerprint", required=True, help="the CA's SHA-256 fingerprint")
    sp.add_argument("--off", action="store_true", help="turn it off")
    sp.add_argument(
        "--hardware-id-from",
        choices=["subject_cn", "san_uri", "san_dns", "serial"],
        default="subject_cn",
    )
    sp.add_argument("--san-prefix", default="", help="SAN entries start with it; cut off")
    sp.add_argument("--metadata", action="append", help="key=value on every device (repeat)")
    sp.add_argument(
        "--allow-certificate-rotation",
        action="store_true",
        help="a known hardware_id with a new certificate of this CA replaces the old one",
    )
    sp.set_defaults(func=_registry_command(_cas_auto_provision))

    # provisioning by claim
    claims = sub.add_parser(
        "claims", help="claim credentials: devices that provision themselves"
    ).add_subparsers(dest="action", required=True, parser_class=_Parser)
    sp = claims.add_parser("create", parents=[common], help="prints the claim's secret, once")
    tenant(sp)
    sp.add_argument("--kind", choices=["api_key", "psk"], default="api_key")
    sp.add_argument("--credential-kind", choices=["api_key", "psk"], default="api_key")
    sp.add_argument("--max-uses", type=_positive_int, required=True)
    sp.add_argument("--expires", help="90d, 12h, 30m, 3600s or an ISO 8601 time (default: never)")
    sp.add_argument("--psk-hex", help="a psk claim's key, assigned (default: generated)")
    sp.set_defaults(func=_registry_command(_claims_create))
    sp = claims.add_parser("list", parents=[common])
    tenant(sp)
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.add_argument("--cursor")
    sp.set_defaults(func=_registry_command(_claims_list))
    sp = claims.add_parser("revoke", parents=[common])
    tenant(sp)
    sp.add_argument("--claim", required=True, help="the claim id (clm_...)")
    sp.set_defaults(func=_registry_command(_claims_revoke))

    tenants = sub.add_parser("tenants", help="tenant settings").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = tenants.add_parser("settings", parents=[common], help="show or change trust settings")
    tenant(sp)
    sp.add_argument(
        "--allow-self-signed",
        choices=["on", "off"],
        help="accept self-signed device certificates (with proof of possession)",
    )
    sp.set_defaults(func=_registry_command(_tenant_settings))

    sp = sub.add_parser("downlink", parents=[common], help="send a message to a device")
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.add_argument("--kind", required=True, help="e.g. config, command (a-z, 0-9, _ and -)")
    sp.add_argument("--payload", required=True)
    sp.add_argument("--json", action="store_true", help="the payload is JSON, not text")
    sp.add_argument("--qos", type=int, choices=[0, 1], default=1)
    sp.add_argument(
        "--expiry", type=int, default=None, help="seconds after which it is not delivered"
    )
    sp.set_defaults(func=_registry_command(_downlink, out=_one_line))

    lwm2m = sub.add_parser(
        "lwm2m", help="LwM2M operations on a registered device (via its session's node)"
    ).add_subparsers(dest="operation", required=True, parser_class=_Parser)
    sp = lwm2m.add_parser(
        "models", parents=[common], help="the object models (OMA DDF) the broker knows"
    )
    sp.add_argument("--object", type=int, help="one object's definition with its resources")
    sp.set_defaults(func=cmd_lwm2m_models)
    sp = lwm2m.add_parser("registration", parents=[common], help="the device's registration")
    tenant(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=_registry_command(_lwm2m))
    sp = lwm2m.add_parser(
        "request", parents=[common], help="a queued request's state and result (queue mode)"
    )
    tenant(sp)
    sp.add_argument("--id", required=True, help="the request id (rq_...) the operation answered")
    sp.set_defaults(func=_registry_command(_lwm2m))
    for name, text in (
        ("read", "read a resource, instance or object"),
        ("write", "write values (--values JSON)"),
        ("execute", "execute a resource"),
        ("observe", "observe a path (notifications become uplinks)"),
        ("cancel-observe", "cancel an observation"),
        ("discover", "discover what is under a path (with the device's attributes)"),
        ("write-attributes", "write notification attributes (pmin, pmax, gt, lt, st, ...)"),
        ("create", "create object instance(s): --path /OBJECT --values naming /OBJECT/ID/RES"),
        ("delete", "delete an object instance (--path /OBJECT/ID)"),
        ("read-composite", "read several paths at once (LwM2M 1.1, SenML)"),
        ("observe-composite", "observe several paths as one observation (LwM2M 1.1)"),
        ("cancel-observe-composite", "cancel a composite observation (same --paths)"),
        ("write-composite", "write values anywhere on the device at once (LwM2M 1.1)"),
    ):
        composite = name.endswith("-composite")
        sp = lwm2m.add_parser(name, parents=[common], help=text)
        tenant(sp)
        sp.add_argument("--device", required=True)
        if composite and name != "write-composite":
            sp.add_argument("--paths", required=True, help="comma-separated: /3/0/0,/3303/0")
        elif not composite:
            sp.add_argument("--path", required=True, help="e.g. /3/0/0")
        sp.add_argument("--timeout", type=_seconds, help="seconds to wait for the device")
        sp.add_argument(
            "--deadline",
            type=_seconds,
            help="queue mode: seconds a request for a sleeping device may wait",
        )
        if name in ("read", "observe", "cancel-observe"):
            sp.add_argument("--accept", type=int, help="content format to ask for")
        if composite:
            sp.add_argument("--accept", type=int, help="110 (SenML JSON) or 112 (SenML CBOR)")
        if name == "execute":
            sp.add_argument("--args", help="arguments, e.g. 0='x',1")
        if name in ("write", "create", "write-composite"):
            sp.add_argument(
                "--values",
                required=True,
                help='JSON: [{"path": "/1/0/1", "value": 60}] (type optional for known resources)',
            )
        if name == "write":
            sp.add_argument("--partial", action="store_true", help="partial update (POST)")
        if name == "write-attributes":
            for attr, kind, text in (
                ("pmin", int, "minimum period (s)"),
                ("pmax", int, "maximum period (s)"),
                ("gt", float, "greater than (numeric resources)"),
                ("lt", float, "less than (numeric resources)"),
                ("st", float, "step (numeric resources)"),
                ("epmin", int, "minimum evaluation period (s)"),
                ("epmax", int, "maximum evaluation period (s)"),
            ):
                sp.add_argument(f"--{attr}", type=kind, help=text)
            sp.add_argument("--clear", help="attributes to remove, comma-separated (e.g. gt,lt)")
        sp.set_defaults(func=_registry_command(_lwm2m))

    sp = lwm2m.add_parser("firmware-upload", parents=[common], help="upload a firmware image")
    tenant(sp)
    sp.add_argument("--file", required=True, help="the image file")
    sp.add_argument("--name", required=True)
    sp.add_argument("--version", required=True)
    sp.set_defaults(func=_registry_command(_firmware))
    sp = lwm2m.add_parser("firmware-list", parents=[common], help="the tenant's firmware images")
    tenant(sp)
    sp.set_defaults(func=_registry_command(_firmware))
    sp = lwm2m.add_parser(
        "firmware-update", parents=[common], help="update devices to an image (a campaign)"
    )
    tenant(sp)
    sp.add_argument("--image", required=True, help="the image id (fw_...)")
    sp.add_argument("--device", required=True, action="append", help="a device (repeatable)")
    sp.add_argument("--method", choices=["pull", "push"], default="pull")
    sp.set_defaults(func=_registry_command(_firmware))
    sp = lwm2m.add_parser(
        "firmware-campaign", parents=[common], help="a campaign: counts per state, its jobs"
    )
    tenant(sp)
    sp.add_argument("--id", required=True, help="the campaign id (fc_...)")
    sp.set_defaults(func=_registry_command(_firmware))

    sp = lwm2m.add_parser(
        "events", parents=[common], help="follow the tenant's LwM2M events (JSON lines)"
    )
    tenant(sp)
    sp.add_argument("--device", help="only this device's events")
    sp.add_argument(
        "--after",
        type=_event_id,
        help="resume after this event id (0: from the oldest kept); default: new only",
    )
    sp.add_argument("--count", type=_positive_int, help="exit after this many events")
    sp.set_defaults(func=cmd_lwm2m_events)

    sp = sub.add_parser(
        "tail", parents=[common], help="follow a tenant's uplinks (JSON lines) as they arrive"
    )
    tenant(sp)
    sp.add_argument("--device", help="only this device's uplinks")
    sp.add_argument(
        "--from-start", action="store_true", help="print the stream's kept history first"
    )
    sp.add_argument("--count", type=_positive_int, help="exit after this many uplinks")
    sp.set_defaults(func=cmd_tail)

    sessions = sub.add_parser(
        "sessions", help="live sessions on every node (the sessions index)"
    ).add_subparsers(dest="action", required=True, parser_class=_Parser)
    sp = sessions.add_parser("list", parents=[common], help="a tenant's live sessions")
    tenant(sp)
    sp.add_argument("--device", help="only this device's sessions")
    sp.add_argument("--transport", help="only this transport's (mqtt, coap, ...)")
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.set_defaults(func=cmd_sessions)
    sp = sessions.add_parser(
        "disconnect",
        parents=[common],
        help="close one live session (not a revocation: the device may reconnect)",
    )
    tenant(sp)
    sp.add_argument("--session", required=True, help="a session id from 'sessions list'")
    sp.set_defaults(func=cmd_sessions)

    sp = sub.add_parser("simulate", parents=[common], help="run a simulated device fleet")
    if simulate:
        from corem_ingress.sim.cli import add_arguments as add_sim_arguments

        add_sim_arguments(sp)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser(
        "version", parents=[common], help="the version, and which hot modules run compiled"
    )
    sp.set_defaults(func=cmd_version)

    sp = sub.add_parser("dev-certs", parents=[common], help="write DEV ONLY certificates")
    sp.add_argument("--out", default="certs-dev")
    sp.set_defaults(func=cmd_dev_certs)

    kek = sub.add_parser("kek", help="PSK key-encryption keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    sp = kek.add_parser("generate", parents=[common], help="print a new 'kid:base64' KEK line")
    sp.add_argument("--id", default=time.strftime("k%Y%m%d"))
    sp.set_defaults(func=cmd_kek_generate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(simulate="simulate" in words)
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except config_mod.ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except Unavailable as exc:
        return _fail(f"{exc.code}: {exc.message}", EXIT_SERVER)
    except (IngressError, InvalidArgument) as exc:
        return _fail(f"{exc.code}: {exc.message}", exc.cli_exit)
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # a listener's port (serve), not Redis
            return _fail(f"cannot listen: {exc}", EXIT_SERVER)
        return _fail(f"cannot reach Redis: {exc}", EXIT_SERVER)
    except redis_exceptions.RedisError as exc:
        return _fail(f"cannot reach Redis: {exc}", EXIT_SERVER)


def _reader_gone() -> int:
    """Whoever read our output closed it (``| head -1``): end quietly, as a C tool killed by
    SIGPIPE would (128 + 13), and point stdout at /dev/null so the exit flush cannot fail too."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    return code
