"""Observe bookkeeping: tokens, paths, RFC 7641 freshness, removal. Pure, time passed in."""

import pytest

from corem_ingress.core.errors import AlreadyExists, InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.observations import ObservationTable, is_fresher


def test_freshness_rule() -> None:
    assert is_fresher(1, 0, 2, 0)
    assert not is_fresher(2, 0, 1, 0)
    assert not is_fresher(5, 0, 5, 0)
    assert is_fresher((1 << 24) - 1, 0, 0, 0)  # wrap-around
    assert not is_fresher(0, 0, (1 << 24) - 1, 0)
    assert is_fresher(9, 0, 1, 129)  # older number, but more than 128 s later


def test_table_lifecycle() -> None:
    t = ObservationTable()
    a = t.add(b"\x01", "r1", "dev-1", ops.observe("/3303/0"), now=0)
    t.add(b"\x02", "r1", "dev-1", ops.observe("/3/0/9"), now=0)
    t.add(b"\x03", "r2", "dev-2", ops.observe("/3303/0"), now=0)
    assert len(t) == 3
    assert t.for_path("dev-1", Lwm2mPath.parse("/3303/0")) is a
    assert t.notification(b"\x01", 5, now=1) is a
    assert t.notification(b"\x01", 4, now=2) is None  # reordered: stale
    assert t.notification(b"\x01", 6, now=3) is a and a.last_seq == 6
    assert t.notification(b"\x01", None, now=4) is a  # final non-notification response
    assert t.notification(b"\x09", 1, now=1) is None  # unknown token
    with pytest.raises(AlreadyExists):
        t.add(b"\x01", "r1", "dev-1", ops.observe("/1/0"), now=0)
    with pytest.raises(AlreadyExists):
        t.add(b"\x04", "r1", "dev-1", ops.observe("/3303/0"), now=0)
    with pytest.raises(InvalidArgument):
        t.add(b"\x05", "r1", "dev-1", ops.read("/1/0"), now=0)
    with pytest.raises(InvalidArgument):
        t.add(b"", "r1", "dev-1", ops.observe("/1/0"), now=0)
    assert t.remove(b"\x02") is not None and t.remove(b"\x02") is None
    assert [o.token for o in t.remove_device("dev-1")] == [b"\x01"]
    assert t.for_path("dev-1", Lwm2mPath.parse("/3303/0")) is None
    assert [o.token for o in t.remove_registration("r2")] == [b"\x03"]
    assert len(t) == 0 and t.remove_device("dev-1") == []
