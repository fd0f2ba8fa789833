"""Bandwidth budgets for duplication: a token bucket per session and a global cap on extra bytes.

Redundancy cuts tail latency only while it is targeted and budgeted (The Tail at Scale, gRPC
hedging); unbudgeted duplication turns a congested path into a more congested one. Two guards:

* `TokenBucket` per mirror session limits the mirror copy to `rate_bytes_per_s` with `burst_bytes`.
* `DuplicationBudget` caps all extra bytes at a share of all bytes sent (default 10 %). Like gRPC's
  retry throttling it is a token count, not a rate: every original byte earns a fraction of a
  token, every duplicated byte spends one, and tokens are capped at the burst. So over any history
  `extra <= share * (original + extra) + burst`, whatever the timing.

Both are pure: no clock is read, `now` (seconds) is passed in. They are small mutable objects with
`__slots__` rather than frozen values because they run once per duplicated packet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class BudgetError(ValueError):
    """A budget configured with values that cannot work (negative rate, share outside 0..1)."""


@dataclass(frozen=True)
class SessionBudget:
    """The mirror copy's allowance for one session."""

    rate_bytes_per_s: float
    burst_bytes: int

    def __post_init__(self) -> None:
        if not self.rate_bytes_per_s > 0 or math.isinf(self.rate_bytes_per_s):
            raise BudgetError(f"mirror rate must be a positive number of bytes/s, got {self.rate_bytes_per_s}")
        if self.burst_bytes < 1:
            raise BudgetError(f"mirror burst must be at least 1 byte, got {self.burst_bytes}")

    @property
    def rate_bps(self) -> float:
        return self.rate_bytes_per_s * 8


class TokenBucket:
    """Bytes/s with a burst; starts full so the first packets of a new mirror are not delayed."""

    __slots__ = ("rate_bytes_per_s", "burst_bytes", "_tokens", "_updated_at", "admitted_bytes", "refused_bytes")

    def __init__(self, budget: SessionBudget, now: float) -> None:
        self.rate_bytes_per_s = budget.rate_bytes_per_s
        self.burst_bytes = float(budget.burst_bytes)
        self._tokens = self.burst_bytes
        self._updated_at = now
        self.admitted_bytes = 0
        self.refused_bytes = 0

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def can_take(self, nbytes: int, now: float) -> bool:
        return self.available(now) >= nbytes

    def take(self, nbytes: int, now: float) -> bool:
        """Spend `nbytes` if the bucket holds them (all or nothing: a packet is copied whole or not)."""
        self._refill(now)
        if self._tokens >= nbytes:
            self._tokens -= nbytes
            self.admitted_bytes += nbytes
            return True
        self.refused_bytes += nbytes
        return False

    def charge(self, nbytes: int, now: float) -> None:
        """Debit `nbytes` already sent (the native loop copies first, the daemon accounts after the
        wake-up): the tokens may go below zero, and admissions then wait until they refill."""
        self._refill(now)
        self._tokens -= nbytes
        self.admitted_bytes += nbytes

    def _refill(self, now: float) -> None:
        # Ignore a clock that steps back: refilling on it would mint tokens out of nothing.
        if now > self._updated_at:
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._updated_at) * self.rate_bytes_per_s)
            self._updated_at = now


@dataclass(frozen=True)
class DuplicationBudgetConfig:
    share: float = 0.10  # extra bytes as a fraction of all bytes sent (original + extra)
    burst_bytes: int = 256 * 1024  # head room, and the cap on saved-up tokens

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0:
            raise BudgetError(f"duplication share must be in [0, 1), got {self.share}")
        if self.burst_bytes < 0:
            raise BudgetError(f"duplication burst must be >= 0 bytes, got {self.burst_bytes}")


class DuplicationBudget:
    """Global guard on all duplication by this node (see the module docstring for the bound)."""

    __slots__ = ("config", "_earn_per_byte", "_tokens", "original_bytes", "extra_bytes", "refused_bytes")

    def __init__(self, config: DuplicationBudgetConfig | None = None) -> None:
        self.config = config or DuplicationBudgetConfig()
        # extra <= s * (orig + extra)  <=>  extra <= s / (1 - s) * orig
        self._earn_per_byte = self.config.share / (1.0 - self.config.share)
        self._tokens = float(self.config.burst_bytes)
        self.original_bytes = 0
        self.extra_bytes = 0
        self.refused_bytes = 0

    @property
    def tokens(self) -> float:
        return self._tokens

    def record_original(self, nbytes: int) -> None:
        """Every byte sent on a standard path (mirrored flow or not) earns duplication allowance."""
        self.original_bytes += nbytes
        self._tokens = min(float(self.config.burst_bytes), self._tokens + nbytes * self._earn_per_byte)

    def can_spend(self, nbytes: int) -> bool:
        return self._tokens >= nbytes

    def spend(self, nbytes: int) -> bool:
        if self._tokens >= nbytes:
            self._tokens -= nbytes
            self.extra_bytes += nbytes
            return True
        self.refused_bytes += nbytes
        return False

    def charge(self, nbytes: int) -> None:
        """Debit copies already sent (see TokenBucket.charge): the allowance may go below zero."""
        self._tokens -= nbytes
        self.extra_bytes += nbytes

    def extra_share(self) -> float:
        total = self.original_bytes + self.extra_bytes
        return self.extra_bytes / total if total else 0.0


def admit_copy(session: TokenBucket, global_budget: DuplicationBudget, nbytes: int, now: float) -> bool:
    """Send the mirror copy of an `nbytes` packet only if both the session and the global budget
    allow it; debit both or neither, so a refusal by one never wastes the other's tokens."""
    session_allows, global_allows = session.can_take(nbytes, now), global_budget.can_spend(nbytes)
    if session_allows and global_allows:
        session.take(nbytes, now)
        global_budget.spend(nbytes)
        return True
    # Count the refusal against whichever budget said no, so metrics show which one binds.
    if not session_allows:
        session.refused_bytes += nbytes
    if not global_allows:
        global_budget.refused_bytes += nbytes
    return False
