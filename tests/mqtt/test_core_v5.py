"""MQTT 5.0 in the sans-I/O core: properties, reason codes, DISCONNECT. No I/O."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.mqtt import codec
from corem_ingress.adapters.mqtt import properties as props
from corem_ingress.adapters.mqtt.codec import Connect, PacketType, Properties
from corem_ingress.adapters.mqtt.connection import ConnectionConfig, MqttConnection, State
from corem_ingress.adapters.mqtt.events import (
    ConnectionClosed,
    ConnectReceived,
    PublishReceived,
    PublishRefused,
    SubscribeReceived,
    UnsubscribeReceived,
)
from corem_ingress.adapters.mqtt.properties import Prop
from corem_ingress.core.causes import Cause

pytestmark = pytest.mark.unit

DEV = "0b0e0c6a-3f1e-4a51-9a0b-2f0f5f7f1a11"
TOPIC = f"devices/{DEV}/up/event"
CFG = ConnectionConfig(
    max_packet_size=1024,
    connect_timeout=5,
    max_keepalive=100,
    max_inflight=2,
    topic_alias_maximum=4,
)


def events(conn: MqttConnection) -> list[object]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def connect5(client_id: str = DEV, keepalive: int = 10, **p: int | str) -> bytes:
    values = {Prop[k.upper()]: v for k, v in p.items()}
    return codec.encode_connect(
        Connect(5, client_id, True, keepalive, None, None, properties=Properties(values))
    )


def connack5(*items: tuple[Prop, int | str]) -> bytes:
    return codec.encode_connack(False, 0, props.encode(list(items)))


DEFAULT_CONNACK = (
    (Prop.RECEIVE_MAXIMUM, 2),
    (Prop.MAXIMUM_PACKET_SIZE, 1024),
    (Prop.TOPIC_ALIAS_MAXIMUM, 4),
    (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
)


def connected5(**p: int | str) -> MqttConnection:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect5(**p), 0.0)
    (event,) = events(conn)
    assert isinstance(event, ConnectReceived) and event.connect.protocol_level == 5
    conn.accept(0.0, 10)
    assert conn.data_to_send() == connack5(*DEFAULT_CONNACK)
    return conn


def publish5(pid: int | None, qos: int = 1, topic: str = TOPIC, **p: object) -> bytes:
    items: list[tuple[Prop, int | str | bytes]] = []
    for k, v in p.items():
        if k == "user":
            assert isinstance(v, list)
            items += [(Prop.USER_PROPERTY, f"{a}={b}") for a, b in v]
        else:
            assert isinstance(v, int | str | bytes)
            items.append((Prop[k.upper()], v))
    return codec.encode_publish(topic, b"{}", qos, pid, properties=props.encode(items))


def test_connect_properties_are_decoded_and_connack_says_what_the_server_decided() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect5("", keepalive=0, session_expiry_interval=60, receive_maximum=1), 0.0)
    (event,) = events(conn)
    assert isinstance(event, ConnectReceived)
    assert event.connect.properties.int(Prop.SESSION_EXPIRY_INTERVAL) == 60
    conn.accept(0.0, 0, assigned_client_id=DEV)
    assert conn.data_to_send() == connack5(
        *DEFAULT_CONNACK,
        (Prop.SERVER_KEEP_ALIVE, 100),  # keep-alive 0 was clamped to max_keepalive
        (Prop.ASSIGNED_CLIENT_IDENTIFIER, DEV),
        (Prop.SESSION_EXPIRY_INTERVAL, 0),  # no persistent sessions (yet)
    )
    # The client's Receive Maximum (1) bounds our QoS 1 downlinks.
    assert conn.send_publish("t", b"a", 1) and not conn.send_publish("t", b"b", 1)


def test_empty_client_id_without_clean_start_is_fine_in_v5() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(codec.encode_connect(Connect(5, "", False, 10, None, None)), 0.0)
    assert isinstance(events(conn)[0], ConnectReceived) and conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        (Cause.UNKNOWN_OR_REVOKED, 0x87),
        (Cause.MALFORMED, 0x86),
        (Cause.TENANT_CONNECTIONS, 0x97),
        (Cause.UNAVAILABLE, 0x88),
        (Cause.TAKEN_OVER, 0x80),  # 0x8E is not a CONNACK code
    ],
)
def test_refusal_is_a_v5_connack_with_the_cause_reason(cause: Cause, code: int) -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect5(), 0.0)
    events(conn)
    conn.refuse(cause)
    assert conn.data_to_send() == bytes((0x20, 3, 0, code, 0))
    assert events(conn) == [ConnectionClosed(cause, True)]


def test_enhanced_authentication_is_refused() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(connect5(authentication_method="SCRAM-SHA-1"), 0.0)
    assert conn.data_to_send() == bytes((0x20, 3, 0, 0x8C, 0))
    (event,) = events(conn)
    assert isinstance(event, ConnectionClosed)
    conn = connected5()
    conn.receive_data(b"\xf0\x02\x18\x00", 0.0)  # AUTH, continue authentication
    assert conn.data_to_send() == b"\xe0\x01\x82"
    assert isinstance(events(conn)[0], ConnectionClosed)


def test_auth_packet_is_reserved_in_311() -> None:
    conn = MqttConnection(CFG, 0.0)
    conn.receive_data(codec.encode_connect(Connect(4, DEV, True, 10, None, None)), 0.0)
    events(conn)
    conn.accept(0.0, 10)
    conn.data_to_send()
    conn.receive_data(b"\xf0\x00", 0.0)
    assert conn.data_to_send() == b""  # 3.1.1: no DISCONNECT packet from a server
    assert events(conn) == [ConnectionClosed(Cause.PROTOCOL_ERROR, True, "reserved packet type")]


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        (Cause.CREDENTIAL_REVOKED, 0x98),
        (Cause.TRUST_ANCHOR_REMOVED, 0x98),
        (Cause.TAKEN_OVER, 0x8E),
        (Cause.SHUTTING_DOWN, 0x8B),
        (Cause.ACL_VIOLATION, 0x87),
        (Cause.STORAGE_UNAVAILABLE, 0x80),  # 0x88 is not a DISCONNECT code
    ],
)
def test_server_close_sends_disconnect_with_the_cause_reason(cause: Cause, code: int) -> None:
    conn = connected5()
    conn.close(cause)
    assert conn.data_to_send() == bytes((0xE0, 1, code))
    assert conn.state is State.CLOSED


def test_keepalive_timeout_and_oversized_packet_get_their_reason() -> None:
    conn = connected5()
    conn.handle_timer(100.0)
    assert conn.data_to_send() == b"\xe0\x01\x8d"
    conn = connected5()
    conn.receive_data(b"\x30\xff\x7f", 0.0)  # 16 KiB announced, max 1 KiB
    assert conn.data_to_send() == b"\xe0\x01\x95"


def test_publish_properties_reach_the_caller_and_aliases_resolve() -> None:
    conn = connected5()
    conn.receive_data(
        publish5(1, topic_alias=2, content_type="application/json", user=[("a", "1")]), 0.0
    )
    conn.receive_data(publish5(2, topic="", topic_alias=2), 0.0)
    first, second = events(conn)
    assert isinstance(first, PublishReceived) and isinstance(second, PublishReceived)
    assert first.publish.properties.user == (("a", "1"),)
    assert first.publish.properties.str(Prop.CONTENT_TYPE) == "application/json"
    assert second.publish.topic == TOPIC


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (publish5(1, topic_alias=5), 0x94),  # over the Topic Alias Maximum (4)
        (publish5(1, topic="", topic_alias=3), 0x82),  # never set
        (publish5(1, topic=""), 0x82),  # empty topic, no alias
        (publish5(1, subscription_identifier=3), 0x82),  # server-to-client property
    ],
)
def test_bad_topic_alias_or_property_disconnects(packet: bytes, reason: int) -> None:
    conn = connected5()
    conn.receive_data(packet, 0.0)
    assert conn.data_to_send() == bytes((0xE0, 1, reason))
    assert isinstance(events(conn)[0], ConnectionClosed)


def test_bad_payload_format_and_too_many_properties_are_refused_not_stored() -> None:
    conn = connected5()
    bad_utf8 = codec.encode_publish(
        TOPIC, b"\xff", 1, 1, properties=props.encode([(Prop.PAYLOAD_FORMAT_INDICATOR, 1)])
    )
    conn.receive_data(bad_utf8, 0.0)
    conn.receive_data(publish5(2, qos=2, user=[(str(i), "v") for i in range(17)]), 0.0)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBACK, 1, 0x99) + codec.encode_ack(
        PacketType.PUBREC, 2, 0x97
    )
    assert [type(e) for e in events(conn)] == [PublishRefused, PublishRefused]
    assert conn.state is State.CONNECTED


def test_receive_maximum_bounds_qos2_and_qos1_is_left_to_backpressure() -> None:
    conn = connected5()  # Receive Maximum 2
    conn.receive_data(publish5(1) + publish5(2) + publish5(3), 0.0)  # QoS 1: not closed
    assert [type(e) for e in events(conn)] == [PublishReceived] * 3
    conn.receive_data(publish5(4, qos=2) + publish5(5, qos=2), 0.0)
    assert [type(e) for e in events(conn)] == [PublishReceived] * 2
    conn.receive_data(publish5(6, qos=2), 0.0)  # a third QoS 2 awaiting PUBREL
    assert conn.data_to_send() == b"\xe0\x01\x93"


def test_acks_reuse_the_window_and_pubrel_unknown_gets_0x92() -> None:
    conn = connected5()
    conn.receive_data(publish5(1), 0.0)
    (event,) = events(conn)
    assert isinstance(event, PublishReceived)
    conn.ack_publish(event.publish)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBACK, 1)
    conn.receive_data(publish5(2) + publish5(3), 0.0)  # the window has room again
    assert len(events(conn)) == 2
    conn.receive_data(codec.encode_ack(PacketType.PUBREL, 9), 0.0)
    assert conn.data_to_send() == codec.encode_ack(PacketType.PUBCOMP, 9, 0x92)


def test_subscribe_and_unsubscribe_v5() -> None:
    conn = connected5()
    conn.receive_data(codec.encode_subscribe(4, [("a/#", 1)], v5=True), 0.0)
    (event,) = events(conn)
    assert isinstance(event, SubscribeReceived)
    conn.suback(4, [1])
    assert conn.data_to_send() == b"\x90\x04\x00\x04\x00\x01"
    conn.receive_data(b"\xa2\x06\x00\x05\x00\x00\x01a", 0.0)  # UNSUBSCRIBE "a"
    (unsub,) = events(conn)
    assert isinstance(unsub, UnsubscribeReceived) and conn.data_to_send() == b""
    conn.unsuback(5, [0x11])
    assert conn.data_to_send() == b"\xb0\x04\x00\x05\x00\x11"
    # A Subscription Identifier (7) reaches the caller; downlinks carry the matching ones.
    conn.receive_data(b"\x82\x09\x00\x06\x02\x0b\x07\x00\x01a\x00", 0.0)
    (sub,) = events(conn)
    assert isinstance(sub, SubscribeReceived)
    assert sub.subscribe.properties.int(Prop.SUBSCRIPTION_IDENTIFIER) == 7
    assert conn.send_publish("a", b"x", 0, (7, 300))
    assert conn.data_to_send() == codec.encode_publish(
        "a", b"x", 0, properties=b"\x05\x0b\x07\x0b\xac\x02"
    )


def test_subscription_identifiers_follow_their_filters() -> None:
    from corem_ingress.adapters.mqtt.downlink import Subscriptions

    subs = Subscriptions()
    subs.add("d/x/down/#", 1, 5)
    subs.add("d/x/down/config", 0, 9)
    subs.add("d/x/down/+", 0)
    assert sorted(subs.subscription_ids("d/x/down/config")) == [5, 9]
    assert subs.subscription_ids("d/x/down/a/b") == (5,)
    subs.add("d/x/down/#", 1)  # re-subscribed without one: the identifier goes
    subs.remove("d/x/down/config")
    assert subs.subscription_ids("d/x/down/config") == ()


def test_subscribe_options_reserved_bits_are_malformed() -> None:
    conn = connected5()
    conn.receive_data(b"\x82\x07\x00\x06\x00\x00\x01a\xc0", 0.0)
    assert conn.data_to_send() == b"\xe0\x01\x82"


def test_downlink_respects_the_clients_maximum_packet_size() -> None:
    conn = connected5(maximum_packet_size=40)
    assert not conn.send_publish("devices/x/down/config", b"x" * 40, 1)
    assert conn.inflight == 0  # not sent, no packet id used
    assert conn.send_publish("devices/x/down/config", b"small", 1)
    assert conn.data_to_send() == codec.encode_publish(
        "devices/x/down/config", b"small", 1, 1, properties=b"\x00"
    )


def test_disconnect_with_will_message_keeps_the_will() -> None:
    conn = connected5()
    conn.receive_data(b"\xe0\x01\x04", 0.0)
    assert events(conn) == [ConnectionClosed(Cause.PEER_CLOSED, False, "DISCONNECT")]
    assert not conn.disconnected and conn.data_to_send() == b""
    conn = connected5()
    conn.receive_data(b"\xe0\x00", 0.0)
    assert conn.disconnected


def test_properties_codec_rejects_duplicates_and_unknowns() -> None:
    dup = props.encode([(Prop.CONTENT_TYPE, "a"), (Prop.CONTENT_TYPE, "b")])
    with pytest.raises(codec.ProtocolViolation, match="twice"):
        props.decode(dup, 0, "PUBLISH")
    with pytest.raises(codec.ProtocolViolation, match="unknown"):
        props.decode(b"\x02\x7f\x00", 0, "PUBLISH")
    with pytest.raises(codec.ProtocolViolation, match="not allowed"):
        props.decode(props.encode([(Prop.SERVER_KEEP_ALIVE, 1)]), 0, "CONNECT")
    with pytest.raises(codec.ProtocolViolation, match="is 0"):
        props.decode(props.encode([(Prop.RECEIVE_MAXIMUM, 0)]), 0, "CONNECT")


def test_envelope_carries_the_uplinks_mqtt5_properties() -> None:
    from corem_ingress.adapters.mqtt.session import envelope_properties
    from corem_ingress.core.identity import CredentialKind, DeviceIdentity
    from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
    from corem_ingress.store.uplink_batcher import append_args, pack_append

    p = Properties(
        {Prop.CONTENT_TYPE: "text/plain", Prop.PAYLOAD_FORMAT_INDICATOR: 1},
        (("site", "north"), ("site", "south")),  # order and repeats are kept
    )
    meta = envelope_properties(p)
    assert meta == {
        "content_type": "text/plain",
        "payload_format_indicator": 1,
        "user_properties": [["site", "north"], ["site", "south"]],
    }
    assert envelope_properties(Properties({Prop.TOPIC_ALIAS: 1})) is None
    ident = DeviceIdentity("acme", DEV, CredentialKind.X509, "f" * 64)
    plain = Uplink.new(ident, Transport.MQTT, UplinkKind.EVENT, 1, now=1.0)
    rich = Uplink.new(ident, Transport.MQTT, UplinkKind.EVENT, 2, now=2.0, properties=meta)
    assert "properties" not in plain.to_fields() and "properties" not in plain.to_json()
    assert Uplink.from_fields(rich.to_fields()) == rich
    assert rich.to_json()["properties"] == meta
    # The self-packed EVAL: the plain entry keeps its 16 values, the rich one has 18.
    raw = pack_append("k", [plain, rich])
    args, pos = [], raw.index(b"\r\n") + 2
    while pos < len(raw):
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos + 1 : end])
        args.append(raw[end + 2 : end + 2 + size].decode())
        pos = end + 4 + size
    assert raw.startswith(b"*%d\r\n" % len(args))
    assert args[5:] == append_args([plain, rich])[1:]
    assert args[5 + 17] == "18" and args[-2:] == ["properties", rich.to_fields()["properties"]]
