"""The sans-I/O core: codec, connection state machine, topic policy. No event loop, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corem_ingress.adapters.mqtt import codec, policy
from corem_ingress.adapters.mqtt.codec import Connect, PacketType, Publish
from corem_ingress.adapters.mqtt.connection import ConnectionConfig, MqttConnection, State
from corem_ingress.adapters.mqtt.downlink import Subscriptions, plan
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    PublishReceived,
    SubscribeReceived,
)
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import PermissionDenied
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import UplinkKind

pytestmark = pytest.mark.unit

DEV = "0b0e0c6a-3f1e-4a51-9a0b-2f0f5f7f1a11"
OTHER = "9d7b1c2e-5f3a-4b6c-8d9e-0a1b2c3d4e5f"
IDENTITY = DeviceIdentity("acme", DEV, CredentialKind.X509, "f" * 64)
CFG = ConnectionConfig(max_packet_size=1024, connect_timeout=5, max_keepalive=100, max_inflight=2)


def connect_bytes(client_id: str = DEV, keepalive: int = 10, level: int = 4) -> bytes:
    return codec.encode_connect(Connect(level, client_id, True, keepalive, None, None))


def events(conn: MqttConnection) -> list[object]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def connected(now: float = 0.0) -> MqttConnection:
    conn = MqttConnection(CFG, now)
    conn.receive_data(connect_bytes(), now)
    assert isinstance(events(conn)[0], ConnectReceived)
    conn.accept(now, 10)
    assert conn.data_to_send() == b"\x20\x02\x00\x00"
    return conn


# -- codec ----------------------------------------------------------------------------------------
def test_connect_roundtrip_and_fields() -> None:
    c = Connect(4, "dev", False, 30, "u", b"p", "w/t", b"bye", 1, True)
    raw = codec.encode_connect(c)
    first, header, total = codec.frame(raw, 1024) or (0, 0, 0)
    assert total == len(raw)
    assert codec.decode(first, raw[header:]) == c


def test_frame_needs_more_bytes_and_rejects_bad_lengths() -> None:
    assert codec.frame(b"\x30", 100) is None
    assert codec.frame(b"\x30\x80", 100) is None
    with pytest.raises(codec.ProtocolViolation):
        codec.frame(b"\x30\xff\xff\xff\xff\x01", 1 << 30)
    with pytest.raises(codec.PacketTooLarge):
        codec.frame(b"\x30\xff\x7f", 1000)  # known too large before the body arrives


@pytest.mark.parametrize(
    ("first", "body", "why"),
    [
        (0x00, b"", "reserved type"),
        (0x20, b"\x00\x00", "CONNACK from a client"),
        (0x82, b"\x00\x01", "SUBSCRIBE without filters"),
        (0x80, b"\x00\x01\x00\x01a\x00", "SUBSCRIBE with wrong flags"),
        (0x82, b"\x00\x01\x00\x01a\x03", "SUBSCRIBE QoS 3"),
        (0x82, b"\x00\x01\x00\x03a#b\x00", "bad #"),
        (0x36, b"\x00\x01a\x00\x01", "PUBLISH QoS 3"),
        (0x38, b"\x00\x01a", "DUP on QoS 0"),
        (0x30, b"\x00\x03a/+", "wildcard in a topic name"),
        (0x30, b"\x00\x02\xff\xfe", "invalid UTF-8"),
        (0x32, b"\x00\x01a\x00\x00", "packet id 0"),
        (0xC0, b"\x00", "trailing bytes in PINGREQ"),
        (0x10, b"\x00\x04HTTP\x04\x02\x00\x0a\x00\x00", "not MQTT"),
        (0x10, b"\x00\x04MQTT\x04\x03\x00\x0a\x00\x00", "reserved connect flag"),
        (0x10, b"\x00\x04MQTT\x04\x42\x00\x0a\x00\x00\x00\x01x", "password without user"),
    ],
)
def test_decode_rejects(first: int, body: bytes, why: str) -> None:
    with pytest.raises(codec.ProtocolViolation):
        codec.decode(first, body)


def test_publish_encoding_roundtrip() -> None:
    raw = codec.encode_publish("a/b", b"x" * 200, 1, 7)
    first, header, _ = codec.frame(raw, 1024) or (0, 0, 0)
    assert codec.decode(first, raw[header:]) == Publish("a/b", b"x" * 200, 1, False, False, 7)


# -- connection core -------------------------------------------------------------------------------
def test_connect_waits_for_a_decision_and_buffers_early_packets() -> None:
    conn = MqttConnection(CFG, 0.0)
    ping = b"\xc0\x00"
    conn.receive_data(connect_bytes() + ping, 0.0)  # bytes after CONNECT, before CONNACK
    assert [type(e) for e in events(conn)] == [ConnectReceived]
    assert conn.state is State.AUTHENTICATING and conn.data_to_send() == b""
    conn.accept(1.0, 10)
    assert conn.data_to_send() == b"\x20\x02\x00\x00\xd0\x00"  # CONNACK then PINGRESP


def test_packets_split_at_every_byte_boundary() -> None:
    conn = MqttConnection(CFG, 0.0)
    stream = connect_bytes()
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1], 0.0)
    assert [type(e) for e in events(conn)] == [ConnectReceived]
    conn.accept(0.0, 10)
    conn.data_to_send()
    pubs = [codec.encode_publish(f"devices/{DEV}/up/event", b"p%d" % i, 1, i + 1) for i in range(3)]
    data = b"".join(pubs) + b"\xc0\x00"
    for i in range(0, len(data), 7):
        conn.receive_data(data[i : i + 7], 0.0)
    got = events(conn)
    assert [e.publish.payload for e in got if isinstance(e, PublishReceived)] == [
        b"p0",
        b"p1",
        b"p2",
    ]
    assert conn.data_to_send() == b"\xd0\x00" and conn.state is State.CONNECTED


def test_refuse_sends_the_code_and_closes() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect_bytes(), 0.0)
    events(conn)
    conn.refuse(Cause.UNKNOWN_OR_REVOKED)
    assert conn.data_to_send() == b"\x20\x02\x00\x05"
    assert events(conn) == [ConnectionClosed(Cause.UNKNOWN_OR_REVOKED, True)]


def test_protocol_level_below_311_gets_connack_1() -> None:
    # Level 5 was refused here until MQTT 5 was supported (issue 13); 3 is older.
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect_bytes(level=3), 0.0)
    assert conn.data_to_send() == b"\x20\x02\x00\x01"
    assert isinstance(events(conn)[0], ConnectionClosed)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc0\x00",  # PINGREQ before CONNECT
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x10\xff\xff\xff\xff\x7f",
        bytes(range(256)),
    ],
)
def test_garbage_closes_without_raising(data: bytes) -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(data, 0.0)
    (event,) = events(conn)
    assert isinstance(event, ConnectionClosed) and event.error
    conn.receive_data(b"more", 0.0)  # ignored after close
    assert events(conn) == []


def test_oversized_packet_closes() -> None:
    conn = connected()
    conn.receive_data(codec.encode_publish(f"devices/{DEV}/up/event", b"x" * 2000, 0)[:10], 0.0)
    (event,) = events(conn)
    assert isinstance(event, ConnectionClosed) and event.cause is Cause.MAX_SIZE


def test_too_much_data_while_authenticating_closes() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect_bytes(), 0.0)
    events(conn)
    conn.receive_data(b"\xc0\x00" * 1500, 0.0)
    assert isinstance(events(conn)[-1], ConnectionClosed)


def test_connect_timeout_and_keepalive_use_the_given_clock() -> None:
    conn = MqttConnection(CFG, 100.0)
    assert conn.next_timer() == 105.0
    conn.handle_timer(104.9)
    assert events(conn) == []
    conn.handle_timer(105.0)
    assert events(conn) == [
        ConnectionClosed(Cause.HANDSHAKE_TIMEOUT, True, "no CONNECT within connect_timeout")
    ]

    conn = connected(0.0)  # keepalive 10 -> closed after 15 s of silence
    assert conn.next_timer() == 15.0
    conn.receive_data(b"\xc0\x00", 12.0)
    conn.handle_timer(15.0)
    assert events(conn) == [] and conn.next_timer() == 27.0
    conn.handle_timer(27.0)
    assert events(conn) == [ConnectionClosed(Cause.IDLE, True, "keep-alive expired")]


def test_keepalive_zero_gets_the_configured_maximum() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect_bytes(keepalive=0), 0.0)
    events(conn)
    conn.accept(0.0, 0)
    assert conn.next_timer() == 150.0


def test_publish_acks_only_when_told() -> None:
    conn = connected()
    conn.receive_data(codec.encode_publish(f"devices/{DEV}/up/event", b"{}", 1, 9), 0.0)
    (event,) = events(conn)
    assert isinstance(event, PublishReceived)
    assert conn.data_to_send() == b""  # no PUBACK before the caller stored it
    conn.ack_publish(event.publish)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBACK, 9)


def test_qos2_is_stored_once_and_completed() -> None:
    conn = connected()
    pub = codec.encode_publish(f"devices/{DEV}/up/event", b"1", 2, 3)
    conn.receive_data(pub, 0.0)
    (event,) = events(conn)
    assert isinstance(event, PublishReceived)
    conn.ack_publish(event.publish)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBREC, 3)
    conn.receive_data(pub, 0.0)  # re-sent before PUBREL: acknowledged, not reported again
    assert events(conn) == []
    conn.receive_data(codec.encode_ack(PacketType.PUBREL, 3), 0.0)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBREC, 3) + codec.encode_ack(
        PacketType.PUBCOMP, 3
    )


def test_outgoing_inflight_window() -> None:
    conn = connected()
    assert conn.send_publish("t", b"a", 1) and conn.send_publish("t", b"b", 1)
    assert not conn.send_publish("t", b"c", 1)  # max_inflight=2
    assert conn.send_publish("t", b"d", 0)  # QoS 0 is not windowed
    conn.data_to_send()
    conn.receive_data(codec.encode_ack(PacketType.PUBACK, 1), 0.0)
    assert conn.inflight == 1 and conn.send_publish("t", b"c", 1)


def test_subscribe_event_and_suback() -> None:
    conn = connected()
    conn.receive_data(codec.encode_subscribe(4, [("a/#", 1)]), 0.0)
    (event,) = events(conn)
    assert isinstance(event, SubscribeReceived)
    conn.suback(4, [0x80])
    assert conn.data_to_send() == b"\x90\x03\x00\x04\x80"


def test_disconnect_and_second_connect() -> None:
    conn = connected()
    conn.receive_data(b"\xe0\x00", 0.0)
    assert events(conn) == [ConnectionClosed(Cause.PEER_CLOSED, False, "DISCONNECT")]
    conn = connected()
    conn.receive_data(connect_bytes(), 0.0)
    assert events(conn) == [ConnectionClosed(Cause.PROTOCOL_ERROR, True, "second CONNECT")]


# -- policy ------------------------------------------------------------------------------------
def test_client_id_rules() -> None:
    assert policy.client_id_for(IDENTITY, DEV, False) == DEV
    assert policy.client_id_for(IDENTITY, "", True) == DEV
    for client_id, clean in (("", False), (OTHER, True), (DEV.upper(), True), ("x", True)):
        with pytest.raises(PermissionDenied) as err:
            policy.client_id_for(IDENTITY, client_id, clean)
        assert err.value.mqtt_connack == 5


def test_publish_acl() -> None:
    assert policy.uplink_kind(IDENTITY, f"devices/{DEV}/up/telemetry") is UplinkKind.TELEMETRY
    for topic in (
        f"devices/{OTHER}/up/telemetry",
        f"devices/{DEV}/up/other",
        f"devices/{DEV}/up/telemetry/x",
        f"devices/{DEV}/down/config",
        f"devices/{DEV}/up",
        "devices/x/../up/event",
        "$SYS/broker",
    ):
        with pytest.raises(PermissionDenied):
            policy.uplink_kind(IDENTITY, topic)


def test_subscribe_acl() -> None:
    ok = [f"devices/{DEV}/down/#", f"devices/{DEV}/down/+", f"devices/{DEV}/down/config"]
    bad = [
        "#",
        "devices/#",
        f"devices/{DEV}/#",
        f"devices/{DEV}/+/#",
        f"devices/{DEV}/down",
        f"devices/{DEV}/up/#",
        f"devices/{OTHER}/down/#",
        "devices/+/down/#",
        "$SYS/#",
    ]
    assert all(policy.subscribe_allowed(IDENTITY, f) for f in ok)
    assert not any(policy.subscribe_allowed(IDENTITY, f) for f in bad)


def test_downlink_plan_uses_subscription_qos() -> None:
    subs = Subscriptions()
    d = Downlink.new("acme", DEV, "config", {"a": 1}, qos=1, now=0.0)
    assert plan(subs, d) is None
    subs.add(f"devices/{DEV}/down/#", 0)
    assert plan(subs, d) == (f"devices/{DEV}/down/config", 0)
    subs.add(f"devices/{DEV}/down/config", 1)
    assert plan(subs, d) == (f"devices/{DEV}/down/config", 1)
    subs.remove(f"devices/{DEV}/down/config")
    subs.remove(f"devices/{DEV}/down/#")
    assert plan(subs, d) is None


def test_topic_matching() -> None:
    assert policy.topic_matches("a/#", "a")
    assert policy.topic_matches("a/+/c", "a/b/c")
    assert not policy.topic_matches("a/+", "a/b/c")
    assert not policy.topic_matches("a/b", "a")


def test_amqtt_is_not_loaded_by_the_adapter() -> None:
    """The listener is ours: amqtt's fail-open defaults cannot apply to it (fresh process)."""
    code = (
        "import sys, corem_ingress.app, corem_ingress.adapters.mqtt; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'amqtt'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_packed_append_is_valid_resp_with_exactly_the_envelope_fields() -> None:
    """The self-packed EVAL parses as RESP and carries ``Uplink.to_fields()`` verbatim."""
    from corem_ingress.core.uplink import Transport, Uplink
    from corem_ingress.store.uplink_batcher import pack_append

    payloads: list[object] = [{"é": 1, "a": [1.5, None]}, "text ✓", [1, 2], None, 3.25, True]
    ups = [
        Uplink.new(IDENTITY, Transport.MQTT, UplinkKind.EVENT, p, now=1700000000.123456)  # type: ignore[arg-type]
        for p in payloads
    ]
    raw = pack_append("corem:uplink:{acme}", ups)
    assert raw.startswith(b"*%d\r\n" % (5 + len(ups) * 17))
    args, pos = [], raw.index(b"\r\n") + 2
    while pos < len(raw):
        assert raw[pos : pos + 1] == b"$"
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos + 1 : end])
        args.append(raw[end + 2 : end + 2 + size])
        assert raw[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size
    assert args[0] == b"EVAL" and args[3] == b"corem:uplink:{acme}"
    assert args[4] == str(len(ups)).encode()
    for i, up in enumerate(ups):
        entry = args[5 + 17 * i : 5 + 17 * (i + 1)]
        assert entry[0] == b"16"
        fields = {k.decode(): v.decode() for k, v in zip(entry[1::2], entry[2::2], strict=True)}
        assert list(fields.items()) == list(up.to_fields().items())


def test_packed_append_of_several_devices_and_kinds_keeps_each_ones_fields() -> None:
    """The per-device part is packed once and reused (issue 18): interleaved devices,
    tenants, transports and kinds each keep exactly their own ``to_fields()``."""
    from corem_ingress.core.uplink import Transport, Uplink
    from corem_ingress.store.uplink_batcher import pack_append

    other = DeviceIdentity("beta", "e" * 32, CredentialKind.API_KEY, "k")
    ups = [
        Uplink.new(ident, transport, kind, {"n": i}, now=1700000000.0 + i)
        for i, (ident, transport, kind) in enumerate(
            [
                (IDENTITY, Transport.MQTT, UplinkKind.EVENT),
                (other, Transport.HTTP, UplinkKind.TELEMETRY),
                (IDENTITY, Transport.MQTT, UplinkKind.STATE),
                (other, Transport.HTTP, UplinkKind.TELEMETRY),
                (IDENTITY, Transport.MQTT, UplinkKind.EVENT),
            ]
        )
    ]
    for _ in range(2):  # the second time from the kept parts
        raw = pack_append("corem:uplink:{x}", ups)
        args = raw.split(b"\r\n")[2::2]  # no CR LF inside these values
        for i, up in enumerate(ups):
            entry = args[5 + 17 * i : 5 + 17 * (i + 1)]
            fields = {k.decode(): v.decode() for k, v in zip(entry[1::2], entry[2::2], strict=True)}
            assert fields == up.to_fields()


# -- conformance-probe defects (issue 13) --------------------------------------------------------
def test_qos2_and_its_dup_in_one_read_are_reported_once() -> None:
    conn = connected()
    topic = f"devices/{DEV}/up/event"
    first = codec.encode_publish(topic, b"1", 2, 7)
    dup = codec.encode_publish(topic, b"1", 2, 7, dup=True)
    conn.receive_data(first + dup, 0.0)  # the DUP arrives before the first is stored
    (event,) = events(conn)
    assert isinstance(event, PublishReceived)
    assert conn.data_to_send() == b""  # no PUBREC before the caller stored it
    conn.ack_publish(event.publish)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBREC, 7)
    conn.receive_data(codec.encode_ack(PacketType.PUBREL, 7), 0.0)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBCOMP, 7)
    conn.receive_data(first, 0.0)  # released: the id may carry a new message
    assert isinstance(events(conn)[0], PublishReceived)


def test_qos2_awaiting_pubrel_is_bounded_by_the_inflight_window() -> None:
    conn = connected()  # max_inflight=2
    topic = f"devices/{DEV}/up/event"
    conn.receive_data(codec.encode_publish(topic, b"1", 2, 1), 0.0)
    conn.receive_data(codec.encode_publish(topic, b"2", 2, 2), 0.0)
    for event in events(conn):
        assert isinstance(event, PublishReceived)
        conn.ack_publish(event.publish)
    conn.data_to_send()
    conn.receive_data(codec.encode_publish(topic, b"3", 2, 3), 0.0)
    assert events(conn) == [
        ConnectionClosed(Cause.RECEIVE_MAXIMUM, True, "too many QoS 2 messages awaiting PUBREL")
    ]
    # A PUBREL frees a place.
    conn = connected()
    for pid in (1, 2):
        conn.receive_data(codec.encode_publish(topic, b"x", 2, pid), 0.0)
    for event in events(conn):
        assert isinstance(event, PublishReceived)
        conn.ack_publish(event.publish)
    conn.receive_data(codec.encode_ack(PacketType.PUBREL, 1), 0.0)
    conn.receive_data(codec.encode_publish(topic, b"3", 2, 3), 0.0)
    assert [type(e) for e in events(conn)] == [PublishReceived]


def test_empty_client_id_without_clean_session_gets_connack_2() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(codec.encode_connect(Connect(4, "", False, 10, None, None)), 0.0)
    assert conn.data_to_send() == b"\x20\x02\x00\x02"
    (event,) = events(conn)
    assert isinstance(event, ConnectionClosed) and event.cause is Cause.PROTOCOL_ERROR


def _connect_named(name: bytes, level: int) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, 0x02)) + b"\x00\x0a\x00\x01x"
    return bytes((0x10, len(body))) + body


@pytest.mark.parametrize(
    ("name", "level", "reply"),
    [
        (b"MQIsdp", 4, b""),  # [MQTT-3.1.2-1]: wrong name -> close without CONNACK
        (b"MQIsdp", 5, b""),
        (b"MQTX", 4, b""),
        (b"MQIsdp", 3, b"\x20\x02\x00\x01"),  # MQTT 3.1 is a level we do not speak
        (b"MQTT", 3, b"\x20\x02\x00\x01"),  # [MQTT-3.1.2-2]
        (b"MQTT", 6, b"\x20\x03\x00\x84\x00"),  # newer than 5: MQTT 5 CONNACK 0x84
    ],
)
def test_protocol_name_and_level(name: bytes, level: int, reply: bytes) -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(_connect_named(name, level), 0.0)
    assert conn.data_to_send() == reply
    (event,) = events(conn)
    assert isinstance(event, ConnectionClosed) and event.cause is Cause.PROTOCOL_ERROR


def test_subscription_matching_is_exact_lookup_plus_bounded_wildcards() -> None:
    subs = Subscriptions()
    base = f"devices/{DEV}/down"
    subs.add(f"{base}/config", 0)
    subs.add(f"{base}/+", 1)
    subs.add(f"{base}/#", 0)
    assert len(subs) == 3 and f"{base}/+" in subs
    assert subs.qos_for(f"{base}/config") == 1  # highest of the exact and wildcard matches
    assert subs.qos_for(f"{base}/a/b") == 0
    subs.remove(f"{base}/+")
    assert subs.qos_for(f"{base}/config") == 0
    subs.remove(f"{base}/#")
    assert subs.qos_for(f"{base}/command") is None and subs.qos_for(f"{base}/config") == 0


def test_publish_received_event_is_the_dataclass_one() -> None:
    """The core builds its PUBLISH events without the frozen dataclass's __init__ (issue
    18): the same event, still frozen."""
    import dataclasses

    from corem_ingress.adapters.mqtt.connection import _publish_received
    from corem_ingress.adapters.mqtt.events import PublishReceived

    publish = codec.Publish("devices/x/up/telemetry", b"{}", 1, packet_id=7)
    event = _publish_received(publish)
    assert type(event) is PublishReceived and event == PublishReceived(publish)
    assert event.publish is publish
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.publish = publish  # type: ignore[misc]
