"""De-dup window against a reference model that remembers everything (property tests)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topomirror.wire.dedup import DedupWindow, Verdict

SIZE = 64


def reference(seen: dict[int, set[int]], highest: int, seq: int, path: int) -> Verdict:
    if highest >= 0 and seq <= highest:
        if highest - seq >= SIZE:
            return Verdict.REPLAY
        paths = seen.get(seq, set())
        if min(path, 7) in paths:
            return Verdict.REPLAY
        if paths:
            return Verdict.DUPLICATE
    return Verdict.NEW


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3)), max_size=300))
def test_window_matches_reference(arrivals: list[tuple[int, int]]) -> None:
    window = DedupWindow(SIZE, skew_us=10**9)
    seen: dict[int, set[int]] = {}
    highest = -1
    for seq, path in arrivals:
        expected = reference(seen, highest, seq, path)
        got = window.check(seq, path, 0)
        assert got == expected, (seq, path)
        if got in (Verdict.NEW, Verdict.DUPLICATE):
            window.commit(seq, path, 0)
            seen.setdefault(seq, set()).add(min(path, 7))
            highest = max(highest, seq)
    assert window.highest == highest


@given(st.permutations(list(range(200))))
def test_each_sequence_delivered_once_whatever_the_order(order: list[int]) -> None:
    window = DedupWindow(256, skew_us=10**9)
    delivered = 0
    for seq in order + order:  # every packet twice: standard copy, then mirror copy
        path = 0 if delivered < 200 else 1
        verdict = window.check(seq, path, 0)
        if verdict is Verdict.NEW:
            delivered += 1
        if verdict in (Verdict.NEW, Verdict.DUPLICATE):
            window.commit(seq, path, 0)
    assert delivered == 200


def test_time_bound() -> None:
    window = DedupWindow(1024, skew_us=250_000)
    window.commit(100, 0, 1_000_000)
    assert window.check(50, 1, 1_000_000 - 200_000) is Verdict.NEW
    assert window.check(50, 1, 1_000_000 - 300_000) is Verdict.TOO_OLD
    # a copy of something already delivered is a duplicate, whatever its age
    window.commit(60, 0, 900_000)
    assert window.check(60, 1, 0) is Verdict.DUPLICATE


def test_same_path_twice_is_a_replay_and_count_bound() -> None:
    window = DedupWindow(16, skew_us=10**9)
    window.commit(5, 0, 0)
    assert window.check(5, 0, 0) is Verdict.REPLAY
    assert window.check(5, 1, 0) is Verdict.DUPLICATE
    window.commit(100, 0, 0)
    assert window.check(80, 0, 0) is Verdict.REPLAY  # beyond the window by count


def test_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError):
        DedupWindow(1000)
