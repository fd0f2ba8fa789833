"""The recorder's pure steps: undoing meter-base glitches, and which paths an announcement is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from topomirror.lab.record import REBASE_RUN, _core_hops, _rebase
from topomirror.lab.spec import load_lab
from topomirror.topology.graph import NetworkGraph

DIAMOND = Path(__file__).parents[3] / "examples" / "labs" / "diamond-mirror.yaml"


def _report(minimum_ms: float, average_ms: float, packets: int = 3) -> dict[str, int]:
    return {"owd_min_us": int(minimum_ms * 1000), "owd_avg_us": int(average_ms * 1000), "packets": packets,
            "lost": 0}


def test_a_lowered_meter_base_is_undone_and_the_glitch_report_dropped() -> None:
    # 20 s of an idle path at 50 ms; at 5 s the meter's base drops by 90 ms (one early-stamped
    # datagram), so every later report reads 90 ms more; a 40 ms queue at 12 s is real.
    reports = []
    for i in range(400):
        t = i * 0.05
        offset = 90.0 if t > 5.0 else 0.0
        queue = 40.0 if 12.0 <= t < 13.0 else 0.0
        reports.append((t, _report(offset + queue * 0.5, offset + queue)))
    delays = _rebase(reports)
    kept = [(t, d) for (t, _), d in zip(reports, delays, strict=True) if d is not None]
    assert len(reports) - len(kept) <= REBASE_RUN + 1  # only reports around the glitch are dropped
    assert all(d == pytest.approx(0.0, abs=0.01) for t, d in kept if not 12.0 <= t < 13.0)
    assert all(d == pytest.approx(40.0, abs=0.01) for t, d in kept if 12.0 <= t < 13.0)


def test_isolated_dips_of_the_minimum_do_not_move_the_base() -> None:
    reports = [(i * 0.05, _report(20.0 if i % 25 else 5.0, 21.0)) for i in range(400)]
    delays = [d for d in _rebase(reports) if d is not None]
    assert min(delays) == pytest.approx(1.0, abs=0.01)


def test_announcements_count_only_in_their_direction_across_the_core() -> None:
    graph = NetworkGraph.from_lab_spec(load_lab(DIAMOND))
    bulk = _core_hops(graph, "h4", "h2")  # data of an h2 download from h4: e2 -> e1
    assert bulk
    assert bulk & _core_hops(graph, "h3", "h1")  # type: ignore[operator]
    assert not bulk & _core_hops(graph, "h1", "h4")  # type: ignore[operator]  # the other direction
    assert not _core_hops(graph, "h1", "h2")  # same edge router: no shared link
