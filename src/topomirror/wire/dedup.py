"""Receiver-side de-duplication and replay window (RFC 6479 style, plus a time bound).

One window per (sender, epoch). A ring of `size` slots indexed by sequence number holds, for
each recent sequence, the set of paths a copy arrived on (a bit mask of path ids 0-7; higher
path ids share bit 7). That is what lets the receiver tell apart:

- NEW: first copy of this sequence: deliver it (first copy wins);
- DUPLICATE: the sequence already arrived on another path: the expected mirror copy, dropped;
- REPLAY: the sequence already arrived on *this* path, or is older than the window by count;
- TOO_OLD: sent more than `skew_us` before the newest packet seen (the time bound, 250 ms by
  default, as SD-WAN de-duplication bounds path skew).

`check` has no side effects so a receiver can reject cheaply before decrypting; `commit` is
called only after the datagram authenticated, so forged packets never move the window.

`DedupWindow` is the C implementation (`dataplane._fastpath`) when it is built, with the same
behaviour as `PyDedupWindow` here (a property test runs both on the same arrivals).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from topomirror.dataplane.native import fast
from topomirror.wire.header import time_diff_us


class Verdict(enum.IntEnum):
    NEW = 0
    DUPLICATE = 1
    REPLAY = 2
    TOO_OLD = 3


class PyDedupWindow:
    __slots__ = ("size", "skew_us", "_masks", "_highest", "_highest_time")

    def __init__(self, size: int = 16384, skew_us: int = 250_000) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("window size must be a positive power of two")
        self.size = size
        self.skew_us = skew_us
        self._masks = bytearray(size)
        self._highest = -1
        self._highest_time = 0

    @property
    def highest(self) -> int:
        return self._highest

    def check(self, seq: int, path_id: int, send_time_us: int) -> Verdict:
        highest = self._highest
        if highest < 0 or seq > highest:
            return Verdict.NEW
        if highest - seq >= self.size:
            return Verdict.REPLAY
        mask = self._masks[seq & (self.size - 1)]
        bit = 1 << min(path_id, 7)
        if mask & bit:
            return Verdict.REPLAY
        if mask:
            return Verdict.DUPLICATE
        if time_diff_us(self._highest_time, send_time_us) > self.skew_us:
            return Verdict.TOO_OLD
        return Verdict.NEW

    def commit(self, seq: int, path_id: int, send_time_us: int) -> None:
        """Record an authenticated arrival (call only after `check` allowed it)."""
        size_mask = self.size - 1
        highest = self._highest
        if seq > highest:
            advance = seq - highest
            if highest < 0 or advance >= self.size:
                self._masks[:] = bytes(self.size)
            else:
                # Clear the slots the window slides over (they held seq - size).
                start = (highest + 1) & size_mask
                end = start + advance
                if end <= self.size:
                    self._masks[start:end] = bytes(advance)
                else:
                    self._masks[start:] = bytes(self.size - start)
                    self._masks[: end - self.size] = bytes(end - self.size)
            self._highest = seq
            self._highest_time = send_time_us
        self._masks[seq & size_mask] |= 1 << min(path_id, 7)


if TYPE_CHECKING:
    DedupWindow = PyDedupWindow  # the interface both implementations have
elif fast is not None:
    fast.set_verdicts((Verdict.NEW, Verdict.DUPLICATE, Verdict.REPLAY, Verdict.TOO_OLD))
    DedupWindow = fast.DedupWindow
else:
    DedupWindow = PyDedupWindow
