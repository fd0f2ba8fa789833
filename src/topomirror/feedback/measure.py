"""Per-path measurement at the destination (pure: arrival times are passed in).

One `PathMeter` per (sender, path). One-way delay is reported relative to the smallest
(arrival - send) seen on that path recently, because the two hosts' clocks differ by an unknown
offset: what remains is queueing and path change, as delay-based congestion control sees it.
"Recently" is LEDBAT's base delay history (RFC 6817 §3.4.2): the minimum of each of the last
`BASE_BUCKETS` minutes, so clock drift or one mis-stamped sample cannot skew the base for good,
while a queue that stands for less than ten minutes still shows as delay.

`PathMeter` is the C implementation (`dataplane._fastpath`) when it is built, with the same
behaviour as `PyPathMeter` here (a property test feeds both the same arrivals); the native
receive loop records into it without leaving C.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict

from topomirror.dataplane.native import fast
from topomirror.wire.header import U32, time_diff_us
from topomirror.wire.messages import Feedback, PathReport

BASE_BUCKET_US = 60_000_000  # one minute per base-history bucket
BASE_BUCKETS = 10


class PyPathMeter:
    __slots__ = ("path_id", "_base", "_last_transit", "jitter_us", "_highest", "_reported_highest",
                 "packets", "bytes", "wins", "duplicates", "reordered", "_owd_sum", "_owd_min",
                 "_owd_max", "total_packets", "total_wins", "_history", "_bucket_min", "_bucket_end", "_late")

    def __init__(self, path_id: int) -> None:
        self.path_id = path_id
        self._base: int | None = None  # min raw transit (clock offset + propagation) over the history
        self._history: deque[int] = deque(maxlen=BASE_BUCKETS - 1)  # minima of the closed buckets
        self._bucket_min = 0
        self._bucket_end: int | None = None
        self._last_transit: int | None = None
        self.jitter_us = 0.0
        self._highest: int | None = None
        self._reported_highest: int | None = None
        self.total_packets = 0
        self.total_wins = 0
        self._reset()

    def _reset(self) -> None:
        self.packets = self.bytes = self.wins = self.duplicates = self.reordered = self._late = 0
        self._owd_sum = 0
        self._owd_min: int | None = None
        self._owd_max = 0

    def record(self, arrival_us: int, send_time_us: int, path_seq: int, size: int, won: bool) -> None:
        transit = time_diff_us(arrival_us % U32, send_time_us)
        if self._bucket_end is None:
            self._base = self._bucket_min = transit
            self._bucket_end = arrival_us + BASE_BUCKET_US
        elif arrival_us >= self._bucket_end:
            # A new minute: the oldest minute's minimum leaves the base.
            self._history.append(self._bucket_min)
            self._bucket_min = transit
            self._bucket_end = arrival_us + BASE_BUCKET_US
            self._base = min(transit, *self._history)
        elif transit < self._bucket_min:
            self._bucket_min = transit
            if transit < self._base:  # type: ignore[operator]
                self._base = transit
        if self._last_transit is not None:
            self.jitter_us += (abs(transit - self._last_transit) - self.jitter_us) / 16
        self._last_transit = transit
        owd = transit - self._base  # type: ignore[operator]
        self._owd_sum += owd
        self._owd_min = owd if self._owd_min is None or owd < self._owd_min else self._owd_min
        self._owd_max = max(self._owd_max, owd)
        if self._highest is None:
            self._highest = self._reported_highest = (path_seq - 1) % U32
        ahead = (path_seq - self._highest) % U32
        if 0 < ahead < U32 // 2:
            self._highest = path_seq
        else:
            self.reordered += 1
            if not 0 < (path_seq - self._reported_highest) % U32 < U32 // 2:  # type: ignore[operator]
                self._late += 1  # from an interval already reported (counted lost there)
        self.packets += 1
        self.bytes += size
        self.total_packets += 1
        if won:
            self.wins += 1
            self.total_wins += 1
        else:
            self.duplicates += 1

    @property
    def owd_now_us(self) -> int:
        if self._last_transit is None or self._base is None:
            return 0
        return self._last_transit - self._base

    def _take(self) -> tuple[int, int, int, int, int, int, int, int, int, int] | None:
        """Close the interval: its figures (as the C meter's `_take`), or None if nothing arrived."""
        if self.packets == 0:
            return None
        assert self._highest is not None and self._reported_highest is not None
        expected = (self._highest - self._reported_highest) % U32
        lost = max(0, expected - (self.packets - self._late))
        figures = (self.packets, self.bytes, lost, self.reordered, self.wins, self.duplicates, self._owd_min or 0,
                   self._owd_sum // self.packets, self._owd_max, int(self.jitter_us))
        self._reported_highest = self._highest
        self._reset()
        return figures

    def report(self, interval_ms: int) -> PathReport | None:
        """Close the interval; None if nothing arrived on this path since the last report."""
        return _report(self.path_id, self._take(), interval_ms)


def _report(path_id: int, figures: tuple[int, ...] | None, interval_ms: int) -> PathReport | None:
    if figures is None:
        return None
    packets, size, lost, reordered, wins, duplicates, owd_min, owd_avg, owd_max, jitter = figures
    return PathReport(path_id=path_id, packets=packets, bytes=size, lost=lost, reordered=reordered, wins=wins,
                      duplicates=duplicates, owd_min_us=owd_min, owd_avg_us=owd_avg, owd_max_us=owd_max,
                      jitter_us=jitter, interval_ms=interval_ms)


if fast is not None:
    class PathMeter(fast.PathMeter):  # type: ignore[name-defined,misc]
        """The C meter; `report` wraps its interval figures in a PathReport."""

        __slots__ = ()

        def report(self, interval_ms: int) -> PathReport | None:
            return _report(self.path_id, self._take(), interval_ms)
else:
    PathMeter = PyPathMeter  # type: ignore[misc,assignment]


class FeedbackBuilder:
    """All meters for one sender; builds the FEEDBACK message every interval."""

    def __init__(self, reporter: int) -> None:
        self.reporter = reporter
        self.meters: dict[int, PathMeter] = {}
        self._sequence = 0

    def meter(self, path_id: int) -> PathMeter:
        meter = self.meters.get(path_id)
        if meter is None:
            meter = self.meters[path_id] = PathMeter(path_id)
        return meter

    def build(self, interval_ms: int) -> Feedback | None:
        reports = [r for m in self.meters.values() if (r := m.report(interval_ms)) is not None]
        if not reports:
            return None
        self._sequence += 1
        return Feedback(self.reporter, self._sequence, reports)


class PathHistory:
    """What the source learned about its paths to one peer from FEEDBACK (a bounded history)."""

    def __init__(self, keep: int = 600) -> None:
        self.reports: dict[int, deque[tuple[float, PathReport]]] = {}
        self.keep = keep

    def add(self, received_at: float, feedback: Feedback) -> None:
        for report in feedback.paths:
            self.reports.setdefault(report.path_id, deque(maxlen=self.keep)).append((received_at, report))

    def as_dict(self, last: int = 50) -> dict[str, list[dict[str, object]]]:
        return {
            str(path): [{"at": round(at, 3), **asdict(r)} for at, r in list(history)[-last:]]
            for path, history in self.reports.items()
        }
