"""Per-path measurement: relative one-way delay, loss, reordering, wins; the base delay history."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from topomirror.feedback.measure import BASE_BUCKET_US, BASE_BUCKETS, PathMeter

OFFSET = 3_000_000  # the receiver's clock runs 3 s ahead of the sender's


def feed(meter: PathMeter, send_us: int, owd_us: int, seq: int, won: bool = True) -> None:
    meter.record(send_us + OFFSET + owd_us, send_us % 2**32, seq, 1000, won)


def test_delay_is_relative_to_the_path_minimum_and_loss_comes_from_path_sequences() -> None:
    meter = PathMeter(0)
    # seq 3 arrives after 4 (reordered, not lost); seq 6 never arrives.
    for seq, owd, won in [(1, 500, True), (2, 700, True), (4, 2500, False), (3, 500, True), (5, 500, True),
                          (7, 500, True)]:
        feed(meter, seq * 1000, owd, seq, won)
    report = meter.report(100)
    assert report is not None
    assert (report.owd_min_us, report.owd_max_us) == (0, 2000)
    assert (report.packets, report.wins, report.duplicates) == (6, 5, 1)
    assert (report.reordered, report.lost) == (1, 1)
    assert meter.report(100) is None  # nothing new since
    # seq 6 turns up in the next interval: late, not a new packet of that interval's sequence range.
    feed(meter, 8000, 500, 6)
    feed(meter, 9000, 500, 8)
    report = meter.report(100)
    assert report is not None and (report.packets, report.reordered, report.lost) == (2, 1, 0)


def test_one_mis_stamped_sample_skews_the_base_for_ten_minutes_at_most() -> None:
    meter = PathMeter(0)
    feed(meter, 0, 1000, 1)
    feed(meter, 1000, -200_000, 2)  # stamped 200 ms too early: looks like a shorter path
    feed(meter, 2000, 1000, 3)
    assert meter.owd_now_us == 201_000  # every later sample reads 201 ms high ...
    send = 2000
    for minute in range(1, BASE_BUCKETS + 2):
        send = minute * BASE_BUCKET_US + 5000
        feed(meter, send, 1000, 3 + minute)
    assert meter.owd_now_us == 0  # ... until its minute leaves the history


def test_a_standing_queue_shorter_than_the_history_still_reads_as_delay() -> None:
    meter = PathMeter(0)
    feed(meter, 0, 1000, 1)
    for i in range(1, 6):  # five minutes of a 30 ms standing queue
        feed(meter, i * BASE_BUCKET_US, 31_000, 1 + i)
    assert meter.owd_now_us == 30_000


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=200))
def test_relative_delay_is_never_negative(owds: list[int]) -> None:
    meter = PathMeter(1)
    for i, owd in enumerate(owds):
        feed(meter, i * 7_000_000, owd, i + 1)  # 7 s apart: the history rolls over during the list
        assert meter.owd_now_us >= 0
    report = meter.report(100)
    assert report is not None and report.owd_min_us >= 0 and report.packets == len(owds)
