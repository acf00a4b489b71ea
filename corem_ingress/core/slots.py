"""Building a frozen, slotted dataclass on a hot path without its ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (it
refuses plain assignment), called with keywords: ~1.5 us for an uplink's nine fields,
~0.9 us for a one-field event, per message (issue 18). ``object.__new__`` and each slot's
own setter build the same object for a fraction of that; callers keep a test holding the
two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: An instance with no field set yet (then every slot is set through ``slot_setter``).
new_instance = object.__new__


def slot_setter(cls: type[T], field: str) -> Callable[[T, Any], None]:
    """``field``'s slot setter on ``cls``: sets it even though the dataclass is frozen."""
    setter: Callable[[T, Any], None] = cls.__dict__[field].__set__
    return setter
