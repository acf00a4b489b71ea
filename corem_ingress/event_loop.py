"""Which asyncio event loop the broker runs: uvloop where installed, unless switched off.

``event_loop`` (``COREM_EVENT_LOOP``): ``auto`` runs uvloop when the optional ``fast``
extra is installed (``pip install 'corem-ingress[fast]'``) and asyncio's own loop
otherwise; ``asyncio`` always runs asyncio's; ``uvloop`` requires it (startup fails
with one line if it is missing). docs/benchmarks.md ("Issue 18") has what it gains.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

CHOICES = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(Exception):
    """``event_loop: uvloop`` asked for, but uvloop is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: str) -> LoopFactory | None:
    """The factory for ``choice`` (None: asyncio's default loop)."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise EventLoopUnavailable(
            "event_loop is 'uvloop' but uvloop is not installed (pip install uvloop)"
        ) from None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio`` (what the startup log says)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
