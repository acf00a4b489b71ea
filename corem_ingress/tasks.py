"""Background loops of a node: how they notice that they were asked to stop.

A loop that retries on Redis errors must not rely on ``CancelledError`` reaching it: a
cancel that lands while a client timeout fires can come out of redis-py as its
``TimeoutError``/``ConnectionError``, which the loop catches and retries, forever (seen: a
node's limits-sync task that outlived ``Node.stop`` and hung the event loop's shutdown).
The task's cancel request is still recorded (``Task.cancelling``): loops check it.
"""

from __future__ import annotations

import asyncio


def still_running() -> bool:
    """False once the running task has been asked to stop (even if the cancel was lost)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0
