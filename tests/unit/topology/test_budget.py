"""Duplication budgets: the per-session token bucket and the global cap on extra bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topomirror.topology.budget import (
    BudgetError,
    DuplicationBudget,
    DuplicationBudgetConfig,
    SessionBudget,
    TokenBucket,
    admit_copy,
)


def test_bucket_starts_full_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(SessionBudget(rate_bytes_per_s=1000, burst_bytes=1500), now=0.0)
    assert bucket.take(1500, now=0.0)
    assert not bucket.take(1, now=0.0)
    assert bucket.take(500, now=0.5)  # 0.5 s at 1000 B/s
    assert not bucket.take(100, now=0.5)
    assert bucket.available(now=100.0) == 1500  # never above the burst
    assert bucket.admitted_bytes == 2000 and bucket.refused_bytes == 101


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(SessionBudget(rate_bytes_per_s=1000, burst_bytes=1000), now=10.0)
    assert bucket.take(1000, now=10.0)
    assert bucket.available(now=5.0) == 0
    assert bucket.available(now=10.5) == 500


@pytest.mark.parametrize("rate, burst", [(0, 10), (-1, 10), (float("inf"), 10), (100, 0)])
def test_bad_session_budgets_are_rejected(rate: float, burst: int) -> None:
    with pytest.raises(BudgetError):
        SessionBudget(rate, burst)


@pytest.mark.parametrize("share, burst", [(-0.1, 0), (1.0, 0), (0.1, -1)])
def test_bad_duplication_budgets_are_rejected(share: float, burst: int) -> None:
    with pytest.raises(BudgetError):
        DuplicationBudgetConfig(share, burst)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 10_000_000), burst=st.integers(1, 100_000),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 9000)), max_size=200),
)
def test_bucket_never_admits_more_than_burst_plus_rate_times_time(
        rate: int, burst: int, steps: list[tuple[float, int]]) -> None:
    bucket = TokenBucket(SessionBudget(rate, burst), now=0.0)
    now = 0.0
    for gap, size in steps:
        now += gap
        bucket.take(size, now)
        assert bucket.admitted_bytes <= burst + rate * now + 1e-6 * (burst + rate * now)


@settings(max_examples=300, deadline=None)
@given(
    share=st.floats(0.0, 0.5), burst=st.integers(0, 200_000),
    events=st.lists(st.tuples(st.booleans(), st.integers(1, 65_000)), max_size=400),
)
def test_extra_bytes_never_exceed_the_share_plus_burst(share: float, burst: int,
                                                       events: list[tuple[bool, int]]) -> None:
    budget = DuplicationBudget(DuplicationBudgetConfig(share=share, burst_bytes=burst))
    for is_copy, size in events:
        if is_copy:
            budget.spend(size)
        else:
            budget.record_original(size)
        total = budget.original_bytes + budget.extra_bytes
        assert budget.extra_bytes <= share * total + burst + 1e-6 * max(total, 1)


def test_default_budget_holds_duplication_near_ten_percent() -> None:
    budget = DuplicationBudget()
    for _ in range(10_000):  # a busy mirrored flow: every packet tries to duplicate
        budget.record_original(1200)
        budget.spend(1200)
    total = budget.original_bytes + budget.extra_bytes
    # At the cap (share of all bytes + the initial burst), and not far below it: the budget is used.
    assert 0.1 * total - 1200 <= budget.extra_bytes <= 0.1 * total + budget.config.burst_bytes
    assert budget.extra_share() == pytest.approx(0.10, abs=0.025)
    assert budget.refused_bytes > 0


def test_admit_copy_debits_both_budgets_or_neither() -> None:
    bucket = TokenBucket(SessionBudget(rate_bytes_per_s=1000, burst_bytes=3000), now=0.0)
    tight = DuplicationBudget(DuplicationBudgetConfig(share=0.1, burst_bytes=1000))
    assert admit_copy(bucket, tight, 1000, now=0.0)
    # The global budget is empty: the session's tokens must not be spent on a refused copy.
    assert not admit_copy(bucket, tight, 1000, now=0.0)
    assert bucket.available(now=0.0) == 2000
    assert tight.refused_bytes == 1000 and bucket.refused_bytes == 0
    tight.record_original(90_000)  # earns 10_000 tokens, capped at the 1000 burst
    assert admit_copy(bucket, tight, 1000, now=0.0)
    assert not admit_copy(bucket, tight, 1500, now=0.0)
    assert bucket.refused_bytes == 1500  # the session bucket (1000 left) said no
