"""The pure decisions of offline delivery (issue 13): message expiry, the answer from the
delivering node's reply, a new MQTT session's terms, stored subscriptions."""

import pytest

from corem_ingress.adapters.mqtt.downlink import Subscriptions, plan, session_terms
from corem_ingress.core.downlink import (
    DeliveryState,
    Downlink,
    DownlinkOutcome,
    DropReason,
    decide_live,
)
from corem_ingress.core.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_expiry_is_kept_through_encode_and_counts_down() -> None:
    d = Downlink.new("t", "dev", "config", "x", qos=1, now=1000.0, expiry_s=60)
    again = Downlink.decode(d.encode())
    assert again.expires_at == 1060.0
    assert again.expiry_left(1000.0) == 60 and again.expiry_left(1059.5) == 1
    assert not again.expired(1059.9) and again.expired(1060.0)
    never = Downlink.new("t", "dev", "config", "x", qos=1, now=0.0)
    assert never.expiry_left(10.0) is None and not never.expired(1e12)
    # A record written before expiry existed decodes as "never expires".
    assert Downlink.decode(never.encode().replace(',"expires_at":0.0', "")).expires_at == 0.0
    for bad in (0, -1, True, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidArgument):
            Downlink.new("t", "dev", "config", "x", qos=1, now=0.0, expiry_s=bad)


@pytest.mark.parametrize(
    ("reply", "queued", "state", "reason"),
    [
        ("delivered", False, DeliveryState.DELIVERED, None),
        ("delivered", True, DeliveryState.DELIVERED, None),
        (None, True, DeliveryState.QUEUED, None),  # nobody answered: it waits in the queue
        ("not_delivered", True, DeliveryState.QUEUED, None),
        ("not_subscribed", True, DeliveryState.DROPPED, DropReason.NOT_SUBSCRIBED),
        ("not_subscribed", False, DeliveryState.DROPPED, DropReason.NOT_SUBSCRIBED),
        (None, False, DeliveryState.DROPPED, DropReason.NOT_DELIVERED),
        ("garbage", False, DeliveryState.DROPPED, DropReason.NOT_DELIVERED),
    ],
)
def test_answer_from_the_delivering_node(
    reply: str | None, queued: bool, state: DeliveryState, reason: DropReason | None
) -> None:
    assert decide_live(reply, queued=queued) == (state, reason)


def test_outcome_json_says_state_first_and_only_what_applies() -> None:
    out = DownlinkOutcome(
        DeliveryState.QUEUED, "m", "d", "1-0", queue_position=3, dropped_oldest=("old",)
    ).to_json()
    assert next(iter(out)) == "state"
    assert out == {
        "state": "queued",
        "queue_position": 3,
        "dropped_oldest": ["old"],
        "message_id": "m",
        "device_id": "d",
        "stream_id": "1-0",
    }
    dropped = DownlinkOutcome(DeliveryState.DROPPED, "m", "d", "1-0", DropReason.EXPIRED)
    assert dropped.to_json()["reason"] == "expired" and "queue_position" not in dropped.to_json()


@pytest.mark.parametrize(
    ("version", "clean", "requested", "terms"),
    [
        (4, True, None, (False, 0)),
        (4, False, None, (True, 600)),  # 3.1.1 CleanSession 0: the configured maximum
        (5, True, None, (False, 0)),  # no Session Expiry Interval: ends with the connection
        (5, False, 0, (False, 0)),
        (5, True, 30, (True, 30)),  # Clean Start 1 discards the old one, the new persists
        (5, False, 6000, (True, 600)),  # clamped
        (5, False, 0xFFFFFFFF, (True, 600)),  # "never" is clamped too
    ],
)
def test_session_terms(
    version: int, clean: bool, requested: int | None, terms: tuple[bool, int]
) -> None:
    assert session_terms(version, clean, requested, 600) == terms


def test_subscriptions_roundtrip_bounded_and_tolerant() -> None:
    subs = Subscriptions()
    subs.add("devices/d/down/#", 1, 7)
    subs.add("devices/d/down/config", 0)
    again = Subscriptions.from_json(subs.to_json(), limit=32)
    assert again.qos_for("devices/d/down/config") == 1
    assert again.subscription_ids("devices/d/down/x") == (7,)
    assert len(Subscriptions.from_json(subs.to_json(), limit=1)) == 1
    assert len(Subscriptions.from_json("not json", limit=32)) == 0
    assert len(Subscriptions.from_json('[["a", 5, null], [1, 1, null], "x"]', limit=32)) == 0
    d = Downlink.new("t", "d", "config", "x", qos=1, now=0.0)
    assert plan(again, d) == ("devices/d/down/config", 1)
