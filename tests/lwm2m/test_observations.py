"""Observe bookkeeping: tokens, paths, RFC 7641 freshness, removal. Pure, time passed in."""

import pytest

from corem_ingress.core.errors import AlreadyExists, InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.observations import ObservationTable, Owner, is_fresher

pytestmark = pytest.mark.unit


def test_freshness_rule() -> None:
    assert is_fresher(1, 0, 2, 0)
    assert not is_fresher(2, 0, 1, 0)
    assert not is_fresher(5, 0, 5, 0)
    assert is_fresher((1 << 24) - 1, 0, 0, 0)  # wrap-around
    assert not is_fresher(0, 0, (1 << 24) - 1, 0)
    assert is_fresher(9, 0, 1, 129)  # older number, but more than 128 s later


def test_table_lifecycle() -> None:
    t = ObservationTable()
    auto = Owner.AUTO
    a = t.add(b"\x01", "r1", "dev-1", "s1", ops.observe("/3303/0"), auto, now=0)
    t.add(b"\x02", "r1", "dev-1", "s1", ops.observe("/3/0/9"), auto, now=0)
    t.add(b"\x03", "r2", "dev-2", "s2", ops.observe("/3303/0"), auto, now=0)
    assert len(t) == 3
    assert t.for_path("r1", Lwm2mPath.parse("/3303/0")) is a
    assert t.notification(b"\x01", 5, now=1) is a
    assert t.notification(b"\x01", 4, now=2) is None  # reordered: stale
    assert t.notification(b"\x01", 6, now=3) is a and a.last_seq == 6
    assert t.notification(b"\x01", None, now=4) is a  # final non-notification response
    assert t.notification(b"\x09", 1, now=1) is None  # unknown token
    with pytest.raises(AlreadyExists):
        t.add(b"\x01", "r1", "dev-1", "s1", ops.observe("/1/0"), auto, now=0)
    with pytest.raises(AlreadyExists):
        t.add(b"\x04", "r1", "dev-1", "s1", ops.observe("/3303/0"), auto, now=0)
    with pytest.raises(InvalidArgument):
        t.add(b"\x05", "r1", "dev-1", "s1", ops.read("/1/0"), auto, now=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        t.add(b"", "r1", "dev-1", "s1", ops.observe("/1/0"), auto, now=0)
    assert t.remove(b"\x02") is not None and t.remove(b"\x02") is None
    assert [o.token for o in t.remove_registration("r1")] == [b"\x01"]
    assert t.for_path("r1", Lwm2mPath.parse("/3303/0")) is None
    assert [o.token for o in t.remove_registration("r2")] == [b"\x03"]
    assert len(t) == 0 and t.remove_registration("r1") == []


def test_an_observation_belongs_to_its_registration_and_session() -> None:
    """Issue 11.8: a device that registers again (its old registration expired unseen)
    keeps nothing of the old one; a session's end takes only its own observations."""
    t = ObservationTable()
    path = Lwm2mPath.parse("/3/0")
    t.add(b"\x01", "old-reg", "dev-1", "s-old", ops.observe("/3/0"), Owner.AUTO, now=0)
    t.add(b"\x02", "other", "dev-2", "s-x", ops.observe("/3/0"), Owner.AUTO, now=0)
    # The new registration of dev-1 sees no observation of /3/0 (keyed by registration).
    assert t.for_path("new-reg", path) is None
    gone = t.remove_device_except("dev-1", "new-reg")
    assert [o.token for o in gone] == [b"\x01"] and len(t) == 1
    t.add(b"\x03", "new-reg", "dev-1", "s-new", ops.observe("/3/0"), Owner.AUTO, now=1)
    assert t.remove_session("s-old") == []  # the old session ending takes nothing now
    assert [o.token for o in t.remove_session("s-new")] == [b"\x03"]
    assert t.get(b"\x02") is not None


def test_operator_and_automatic_owners_share_one_observation() -> None:
    """Issue 21.3: an operator's cancel only drops the operator's interest."""
    t = ObservationTable()
    obs = t.add(b"\x01", "r1", "dev-1", "s1", ops.observe("/3/0"), Owner.AUTO, now=0)
    obs.owners.add(Owner.OPERATOR)
    assert t.release(b"\x01", Owner.OPERATOR) is None  # the automatic feed still wants it
    assert t.get(b"\x01") is obs and obs.owners == {Owner.AUTO}
    obs.owners.add(Owner.OPERATOR)
    assert t.release(b"\x01", Owner.AUTO) is None
    assert t.release(b"\x01", Owner.OPERATOR) is obs  # nobody left: cancel at the device
    assert t.get(b"\x01") is None and t.release(b"\x01", Owner.AUTO) is None
