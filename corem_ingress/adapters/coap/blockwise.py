"""Block-wise transfers (RFC 7959) as plain state: no sockets, no asyncio, no aiocoap.

One implementation for every CoAP user on the port:

* ``Block1Receiver`` — a request body arriving in Block1 blocks (the device site's
  ``POST /up/...`` and LwM2M's Register / Update / Send). 2.31 Continue per block; a block
  that does not continue the body 4.08 Request Entity Incomplete; a total (or announced
  Size1) over the limit 4.13 Request Entity Too Large with Size1; a non-final block of the
  wrong size or a reserved size (SZX 7) 4.00.
* ``Block2Assembler`` — a response or notification arriving in Block2 blocks that we
  fetch block by block (a device's answer to a server-initiated request): the blocks must
  follow each other, keep their ETag, and stay within the limit.
* ``Representations`` — large representations we serve block by block (``GET /down``
  notifications): each gets an ETag; the blocks of one are never mixed with another's.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Hashable
from dataclasses import dataclass

#: SZX 7 is reserved over UDP (BERT exists only over TCP, RFC 8323).
MAX_SZX = 6
#: Request bodies being reassembled at once per session (the oldest is dropped beyond it).
MAX_TRANSFERS = 4
#: Large representations kept per session for their follow-up block requests.
MAX_REPRESENTATIONS = 4


def block_size(szx: int) -> int:
    return 1 << (szx + 4)


def szx_of(size: int) -> int:
    """The SZX of a block size (16..1024)."""
    return size.bit_length() - 5


class BlockError(ValueError):
    """A block-wise transfer that cannot go on; ``code`` is the CoAP reply that fits."""

    def __init__(self, code: str, reason: str, *, size1: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        #: With 4.13: the largest body we take (the Size1 option of the reply).
        self.size1 = size1


# -- Block1: request bodies we receive ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    """Answer 2.31 Continue with Block1 (num, more=True, szx)."""

    num: int
    szx: int


@dataclass(frozen=True, slots=True)
class Complete:
    """The whole body; echo Block1 (num, more=False, szx) in the final response."""

    body: bytes
    num: int
    szx: int


class Block1Receiver:
    """Per session: request bodies by transfer key (the request's path and query)."""

    def __init__(self, max_transfers: int = MAX_TRANSFERS) -> None:
        self._bodies: collections.OrderedDict[Hashable, bytearray] = collections.OrderedDict()
        self._max = max_transfers

    def __len__(self) -> int:
        return len(self._bodies)

    def feed(
        self,
        key: Hashable,
        num: int,
        more: bool,
        szx: int,
        payload: bytes,
        *,
        max_body: int,
        size1: int | None = None,
    ) -> Continue | Complete:
        """One Block1 block; raises ``BlockError`` (and forgets the transfer) on a refusal."""
        if szx > MAX_SZX:
            self._bodies.pop(key, None)
            raise BlockError("4.00", "block size exponent 7 is reserved")
        if size1 is not None and size1 > max_body:
            self._bodies.pop(key, None)
            raise BlockError("4.13", "announced body too large", size1=max_body)
        size = block_size(szx)
        if num == 0:
            self._bodies.pop(key, None)
            self._bodies[key] = bytearray()
            while len(self._bodies) > self._max:
                self._bodies.popitem(last=False)
        body = self._bodies.get(key)
        if body is None or len(body) != num * size:
            self._bodies.pop(key, None)
            raise BlockError("4.08", "block out of sequence")
        if more and len(payload) != size:
            self._bodies.pop(key, None)
            raise BlockError("4.00", "a non-final block must be exactly the block size")
        if len(body) + len(payload) > max_body:
            self._bodies.pop(key, None)
            raise BlockError("4.13", "body too large", size1=max_body)
        body += payload
        if more:
            return Continue(num, szx)
        del self._bodies[key]
        return Complete(bytes(body), num, szx)


# -- Block2: responses we fetch ------------------------------------------------------------------


class Block2Assembler:
    """One response arriving in Block2 blocks: feed each block, request what ``feed`` returns."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._body = bytearray()
        self._etag: bytes | None = None
        self._started = False

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def feed(
        self, num: int, more: bool, szx: int, payload: bytes, etag: bytes | None
    ) -> tuple[int, int] | None:
        """The (num, szx) of the next block to request, or None when the body is complete."""
        if szx > MAX_SZX:
            raise BlockError("4.00", "block size exponent 7 is reserved")
        size = block_size(szx)
        if num * size != len(self._body):
            raise BlockError("4.08", "block out of sequence")
        if not self._started:
            self._etag, self._started = etag, True
        elif etag != self._etag:
            raise BlockError("4.08", "the representation changed between blocks (ETag)")
        if more and len(payload) != size:
            raise BlockError("4.00", "a non-final block must be exactly the block size")
        if len(self._body) + len(payload) > self.max_body:
            raise BlockError("4.13", "body too large", size1=self.max_body)
        self._body += payload
        if not more:
            return None
        return len(self._body) // size, szx


# -- Block2: representations we serve -------------------------------------------------------------


def block_slice(data: bytes, num: int, szx: int) -> tuple[bytes, bool] | None:
    """Block ``num`` of ``data`` and whether more follow; None past the end."""
    size = block_size(szx)
    start = num * size
    if num > 0 and start >= len(data):
        return None
    return data[start : start + size], start + size < len(data)


@dataclass(frozen=True, slots=True)
class Representation:
    etag: bytes
    data: bytes
    content_format: int


class Representations:
    """Large representations of one session, by ETag (bounded: the oldest go first).

    ``current`` is the one whose blocks are still being fetched, if any: block requests
    without an ETag we know are served from it, and the sender of the next large
    representation waits for it (``transfer_open``) so the blocks of two are never mixed.
    """

    def __init__(self, max_entries: int = MAX_REPRESENTATIONS) -> None:
        self._reps: collections.OrderedDict[bytes, Representation] = collections.OrderedDict()
        self._max = max_entries
        self._etags = itertools.count(1)
        self.current: bytes | None = None

    def add(self, data: bytes, content_format: int) -> Representation:
        rep = Representation(next(self._etags).to_bytes(4, "big"), data, content_format)
        self._reps[rep.etag] = rep
        while len(self._reps) > self._max:
            self._reps.popitem(last=False)
        self.current = rep.etag
        return rep

    @property
    def transfer_open(self) -> bool:
        return self.current is not None and self.current in self._reps

    def select(self, etags: tuple[bytes, ...]) -> Representation | None:
        """The representation a block request asks for: by ETag, else the current one,
        else the newest."""
        for etag in etags:
            rep = self._reps.get(etag)
            if rep is not None:
                return rep
        if self.current is not None and self.current in self._reps:
            return self._reps[self.current]
        return next(reversed(self._reps.values()), None)

    def served(self, rep: Representation, last: bool) -> None:
        """A block of ``rep`` went out; the last one closes its transfer."""
        if last and self.current == rep.etag:
            self.current = None

    def abandon(self) -> None:
        """The client did not fetch the rest in time: let the next representation go."""
        self.current = None


__all__ = [
    "MAX_SZX",
    "Block1Receiver",
    "Block2Assembler",
    "BlockError",
    "Complete",
    "Continue",
    "Representation",
    "Representations",
    "block_size",
    "block_slice",
    "szx_of",
]
