"""RFC 7252 §4.2: the retransmission of one confirmable message, sans-I/O.

Deadlines are on the caller's clock (``now`` passed in), so the schedule is tested without
an event loop and the endpoint runs it on whatever clock it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ACK_RANDOM_FACTOR: the first timeout is ACK_TIMEOUT times a random number in [1, 1.5].
ACK_RANDOM_FACTOR = 1.5


@dataclass(slots=True)
class Retransmission:
    max_retransmit: int
    #: When to send again (or give up): the current timeout after the last transmission.
    next_at: float
    timeout: float
    #: Transmissions so far (the first one included).
    sent: int = 1

    @classmethod
    def start(
        cls, now: float, *, ack_timeout: float, max_retransmit: int, random_factor: float
    ) -> Retransmission:
        """The first transmission went out at ``now``; ``random_factor`` in [1, 1.5]."""
        if not 1.0 <= random_factor <= ACK_RANDOM_FACTOR:
            raise ValueError("random_factor must be within [1, ACK_RANDOM_FACTOR]")
        timeout = ack_timeout * random_factor
        return cls(max_retransmit, now + timeout, timeout)

    def timed_out(self, now: float) -> bool:
        """The deadline passed with no ACK: True to send again (the timeout doubles), False
        to give up (``max_retransmit`` retransmissions were made)."""
        if self.sent > self.max_retransmit:
            return False
        self.sent += 1
        self.timeout *= 2
        self.next_at = now + self.timeout
        return True
