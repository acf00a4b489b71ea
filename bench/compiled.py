"""Micro-bench of the compiled hot modules: each codec operation, pure vs compiled, one run.

    .venv/bin/python -m bench.compiled [--seconds 0.3] [--rounds 3] [--json out.json]

Runs the same operations in child interpreters, alternately with ``COREM_PURE=1`` (the
``.py`` files) and without (the mypyc ``.so`` files of this install), ``--rounds`` times
each, and prints ops/s per operation (median of the rounds) and the speedup. Each child
checks which build it got (``corem_ingress.compiled.build()``) and says so. CPU time of
the child (``time.process_time``), so a loaded machine slows both builds alike.
``--tree DIR`` runs the children on another source tree, e.g. an experimental build that
compiles more modules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _cases() -> dict[str, Callable[[], object]]:
    """name -> one operation, as the broker calls it on its hot paths."""
    from corem_ingress.adapters.coap import codec as coap
    from corem_ingress.adapters.dtls import cid, records
    from corem_ingress.adapters.mqtt import codec
    from corem_ingress.adapters.mqtt import properties as props
    from corem_ingress.core.identity import CredentialKind, DeviceIdentity
    from corem_ingress.core.uplink import Transport, Uplink, UplinkKind, payload_from_bytes
    from corem_ingress.store.uplink_batcher import pack_append

    payload = b'{"t":21.5,"h":40,"n":1}'
    pub1 = codec.encode_publish("devices/dev-0001/up/telemetry", payload, 1, packet_id=17)
    _first1, hlen1, _ = codec.frame(pub1, 1 << 20) or (0, 0, 0)
    body1 = pub1[hlen1:]
    props_v5 = props.encode(
        [(props.Prop.CONTENT_TYPE, "application/json"), (props.Prop.MESSAGE_EXPIRY_INTERVAL, 60)]
    )
    pub5 = codec.encode_publish(
        "devices/dev-0001/up/telemetry", payload, 1, packet_id=17, properties=props_v5
    )
    first5, hlen5, _ = codec.frame(pub5, 1 << 20) or (0, 0, 0)
    body5 = pub5[hlen5:]
    connect = codec.encode_connect(
        codec.Connect(4, "dev-0001", True, 60, "dev-0001", b"secret-password")
    )
    cfirst, chlen, _ = codec.frame(connect, 1 << 20) or (0, 0, 0)
    cbody = connect[chlen:]

    def record(ctype: int, epoch: int, seq: int, body: bytes) -> bytes:
        head = bytes([ctype]) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
        return head + len(body).to_bytes(2, "big") + body

    datagram = record(23, 1, 5, b"\x00" * 60) + record(23, 1, 6, b"\x01" * 60)
    hello_body = (
        b"\xfe\xfd" + b"\x11" * 32 + b"\x00" + b"\x10" + b"\x22" * 16 + b"\x00\x04\xc0\xa8\xc0\xae"
    )
    hs = (
        b"\x01"
        + len(hello_body).to_bytes(3, "big")
        + b"\x00\x01\x00\x00\x00"
        + len(hello_body).to_bytes(3, "big")
    )
    hello = record(22, 0, 1, hs + hello_body)
    identity = b"psk-identity-0001"
    cke_body = len(identity).to_bytes(2, "big") + identity
    cke_hs = (
        b"\x10"
        + len(cke_body).to_bytes(3, "big")
        + b"\x00\x02\x00\x00\x00"
        + len(cke_body).to_bytes(3, "big")
    )
    flight = record(22, 0, 2, cke_hs + cke_body) + record(20, 0, 3, b"\x01")
    flight += record(22, 1, 0, b"\x00" * 40)

    suite = cid.SUITES[0xC0A8]
    cipher = cid.RecordCipher(suite, b"k" * 16, b"salt")
    own_cid = b"\xab\xcd\x01\x02\x03\x04\x05\x06"
    sealed = cipher.seal(23, 1, 9, b"x" * 40, own_cid)

    ident = DeviceIdentity("tenant-a", "dev-0001", CredentialKind.X509, "fp")
    ups = [
        Uplink.new(ident, Transport.MQTT, UplinkKind.TELEMETRY, {"t": i}, now=1.5)
        for i in range(16)
    ]

    def handshake_peek() -> object:
        peek = records.HandshakePeek()
        peek.feed(flight)
        return peek.flight_complete(8)

    def window() -> object:
        w = cid.ReplayWindow()
        for seq in range(8):
            if w.check(seq):
                w.accept(seq)
        return w

    coap_cancel = coap.encode(0, coap.GET, 7, b"\x00\x00\x00\x07", [(6, b"\x01"), (11, b"down")])
    coap_post = coap.encode(
        0, coap.POST, 8, b"\x00\x00\x00\x08", [(11, b"up"), (11, b"telemetry")], payload
    )

    def coap_plain(data: bytes) -> object:
        msg = coap.decode(data)
        return coap.plain_request(msg) if msg is not None else None

    return {
        "coap: decode + plain_request (GET /down Observe 1)": lambda: coap_plain(coap_cancel),
        "coap: decode + plain_request (POST /up/telemetry)": lambda: coap_plain(coap_post),
        "coap: reply (ACK 2.04, 4-byte token)": lambda: coap.reply(2, 68, 8, b"\x00\x00\x00\x08"),
        "mqtt: frame + decode PUBLISH QoS 1 (3.1.1)": lambda: codec.decode(
            codec.frame(pub1, 1 << 20)[0],
            body1,
            4,  # type: ignore[index]
        ),
        "mqtt: decode PUBLISH QoS 1 (5.0, 2 properties)": lambda: codec.decode(first5, body5, 5),
        "mqtt: decode CONNECT": lambda: codec.decode(cfirst, cbody, 4),
        "mqtt: encode PUBACK": lambda: codec.encode_ack(codec.PacketType.PUBACK, 17),
        "mqtt: encode PUBLISH QoS 1": lambda: codec.encode_publish(
            "devices/dev-0001/down/cmd", payload, 1, packet_id=3
        ),
        "dtls records: split_records (2 records)": lambda: records.split_records(datagram),
        "dtls records: parse_client_hello": lambda: records.parse_client_hello(hello),
        "dtls records: HandshakePeek of a PSK flight": handshake_peek,
        "dtls cid: split (1 CID record)": lambda: cid.split(sealed, len(own_cid)),
        "dtls cid: open (AES-CCM8, 40 B)": lambda: cipher.open(sealed, len(own_cid)),
        "dtls cid: ReplayWindow, 8 records": window,
        "uplink: payload_from_bytes + Uplink.new": lambda: Uplink.new(
            ident, Transport.MQTT, UplinkKind.TELEMETRY, payload_from_bytes(payload)[0], now=1.5
        ),
        "uplink: to_fields": lambda: ups[0].to_fields(),
        "uplink batcher: pack_append of 16": lambda: pack_append("t:{a}:up", ups),
    }


def _child(seconds: float, tree: Path | None) -> None:
    if tree is not None:
        # An editable install's finder maps the package to its checkout ahead of sys.path.
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
        sys.path.insert(0, str(tree))
    from corem_ingress import compiled

    out: dict[str, object] = {
        "build": compiled.build(),
        "kinds": compiled.module_kinds(),
        "ops": {},
    }
    ops: dict[str, float] = {}
    for name, fn in _cases().items():
        n = 200
        while True:  # calibrate: a batch of about a tenth of the time
            t0 = time.process_time()
            for _ in range(n):
                fn()
            if time.process_time() - t0 > seconds / 10:
                break
            n *= 2
        done, t0 = 0, time.process_time()
        while (elapsed := time.process_time() - t0) < seconds:
            for _ in range(n):
                fn()
            done += n
        ops[name] = done / elapsed
    out["ops"] = ops
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="CPU seconds per operation")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", type=Path, help="run on this source tree (PYTHONPATH)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.seconds, args.tree)
        return
    base = {k: v for k, v in os.environ.items() if k != "COREM_PURE"}
    runs: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
    kinds: dict[str, object] = {}
    for _ in range(args.rounds):
        for build in ("pure", "compiled"):
            env = dict(base, COREM_PURE="1") if build == "pure" else base
            cmd = [sys.executable, "-m", "bench.compiled", "--child"]
            cmd += ["--seconds", str(args.seconds)]
            cmd += ["--tree", str(args.tree.resolve())] if args.tree is not None else []
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            got = json.loads(res.stdout)
            kinds[build] = got["kinds"]
            runs[build].append(got["ops"])
    load = os.getloadavg()[0]
    print(f"bench.compiled: {args.rounds} rounds, {args.seconds} CPU s per op; load {load:.1f}")
    for build, k in kinds.items():
        print(f"  {build} run imported: {json.dumps(k)}")
    rows = []
    print(f"{'operation':<48} {'pure ops/s':>12} {'compiled ops/s':>15} {'speedup':>8}")
    for name in runs["pure"][0]:
        pure = statistics.median(r[name] for r in runs["pure"])
        comp = statistics.median(r[name] for r in runs["compiled"])
        rows.append({"op": name, "pure": pure, "compiled": comp, "speedup": comp / pure})
        print(f"{name:<48} {pure:>12,.0f} {comp:>15,.0f} {comp / pure:>7.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"load": load, "kinds": kinds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
