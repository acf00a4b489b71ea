import base64
import dataclasses
import uuid

import pytest

from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import (
    JsonValue,
    Transport,
    Uplink,
    UplinkKind,
    new_message_id,
    payload_from_bytes,
)

pytestmark = pytest.mark.unit

ID = DeviceIdentity("t", "d", CredentialKind.API_KEY, "key_1")


def test_envelope_fields_roundtrip() -> None:
    u = Uplink.new(ID, Transport.HTTP, UplinkKind.TELEMETRY, {"temp": 21.5}, now=1000.25)
    fields = u.to_fields()
    assert set(fields) >= {
        "tenant_id",
        "device_id",
        "transport",
        "kind",
        "payload",
        "received_at",
        "message_id",
    }
    assert Uplink.from_fields(fields) == u
    assert u.to_json()["payload"] == {"temp": 21.5}


def test_message_ids_are_unique() -> None:
    ids = {
        Uplink.new(ID, Transport.MQTT, UplinkKind.EVENT, 1, now=0).message_id for _ in range(100)
    }
    assert len(ids) == 100


def test_message_ids_are_uuid4_hex() -> None:
    """The same form as ``uuid.uuid4().hex`` (issue 18 builds it without the UUID object)."""
    for _ in range(200):
        mid = Uplink.new(ID, Transport.MQTT, UplinkKind.EVENT, 1, now=0).message_id
        assert len(mid) == 32 and mid == mid.lower()
        parsed = uuid.UUID(hex=mid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == mid


def test_message_ids_unique_across_batches_and_forks() -> None:
    """Ids are made 256 at a time: none repeats across batches, and a forked child does
    not inherit the parent's unused ones (it would hand out the same ids)."""
    import os

    ids = [new_message_id() for _ in range(1000)]  # several batches
    assert len(set(ids)) == len(ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, through the pipe
        os.write(w, new_message_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert len(child) == 32 and child != new_message_id()


def test_new_builds_the_dataclass_object() -> None:
    """``Uplink.new`` sets the slots directly: the same object the dataclass builds, and
    still frozen."""
    props: dict[str, JsonValue] = {"content_type": "a/b"}
    u = Uplink.new(
        ID, Transport.MQTT, UplinkKind.STATE, [1], now=5.5, payload_encoding="text",
        properties=props,
    )  # fmt: skip
    assert u == Uplink(
        "t", "d", Transport.MQTT, UplinkKind.STATE, [1], 5.5, u.message_id, "text", props
    )
    assert dataclasses.replace(u) == u
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.kind = UplinkKind.EVENT  # type: ignore[misc]
    plain = Uplink.new(ID, Transport.HTTP, UplinkKind.EVENT, None, now=0.0)
    assert (plain.payload_encoding, plain.properties) == ("json", None)


def test_kind_parse() -> None:
    assert UplinkKind.parse("state") is UplinkKind.STATE
    with pytest.raises(InvalidArgument):
        UplinkKind.parse("logs")


def test_payload_from_bytes() -> None:
    assert payload_from_bytes(b'{"a":1}') == ({"a": 1}, "json")
    assert payload_from_bytes(b"hello") == ("hello", "text")
    raw = b"\xff\x00\x01"
    assert payload_from_bytes(raw) == (base64.b64encode(raw).decode(), "base64")


def test_downlink_roundtrip_and_validation() -> None:
    d = Downlink.new("t", "d", "config", {"rate": 5}, qos=1, now=1.0)
    assert Downlink.decode(d.encode()) == d
    assert d.payload_bytes() == b'{"rate":5}'
    assert Downlink.new("t", "d", "cmd", "reboot", qos=0, now=1).payload_bytes() == b"reboot"
    for kind in ["", "Config", "a/b", "#", "x" * 65]:
        with pytest.raises(InvalidArgument):
            Downlink.new("t", "d", kind, 1, qos=0, now=0)
    with pytest.raises(InvalidArgument):
        Downlink.new("t", "d", "k", 1, qos=2, now=0)
    with pytest.raises(ValueError):
        Downlink.decode(b'{"kind":"x"}')
