"""decide(): who gets a mirror, what it must avoid, and a reason a person can read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pytest

from topomirror.analysis.decide import Decision, DecisionConfig, FlowSummary, decide
from topomirror.analysis.predict import PathForecast


def _forecast(path: str, probability: float, method: str = "model", time_ms: float = 1000.0,
              horizon_ms: float = 100.0) -> PathForecast:
    return PathForecast(path_id=path, time_ms=time_ms, horizon_ms=horizon_ms, probability=probability, method=method)


def test_latency_sensitive_flow_on_a_path_about_to_congest_is_mirrored() -> None:
    flow = FlowSummary("latency_sensitive", "direct")
    decision = decide(flow, {"direct": _forecast("direct", 0.83), "relay": _forecast("relay", 0.1)}, now_ms=1010.0)
    assert decision == Decision(mirror=True, score=0.83, avoid_paths=("direct",), forecasts_used=("direct",),
                                reason="latency-sensitive flow; path direct congests within 100 ms with p=0.83 (model)")


def test_calm_path_is_not_mirrored_and_says_why() -> None:
    decision = decide(FlowSummary("latency_sensitive", "direct"), {"direct": _forecast("direct", 0.2, "ewma_delay")},
                      now_ms=1000.0)
    assert not decision.mirror and decision.avoid_paths == ()
    assert decision.score == pytest.approx(0.2)
    assert decision.reason == ("latency-sensitive flow; path direct congests within 100 ms with p=0.20 (ewma_delay), "
                               "below threshold 0.5; not mirrored")


def test_bulk_flows_are_never_mirrored() -> None:
    decision = decide(FlowSummary("bulk", "direct"), {"direct": _forecast("direct", 0.99)}, now_ms=1000.0)
    assert not decision.mirror
    assert decision.reason.startswith("bulk flow; never mirrored")


def test_unknown_flows_need_stronger_evidence() -> None:
    flow = FlowSummary("unknown", "direct")
    assert not decide(flow, {"direct": _forecast("direct", 0.7)}, now_ms=1000.0).mirror
    strong = decide(flow, {"direct": _forecast("direct", 0.9)}, now_ms=1000.0)
    assert strong.mirror and strong.reason.startswith("unknown flow; path direct")
    assert decide(flow, {"direct": _forecast("direct", 0.7)}, now_ms=1000.0,
                  config=DecisionConfig(unknown_threshold=0.6)).mirror


def test_a_congesting_link_of_the_standard_path_counts_and_is_avoided() -> None:
    flow = FlowSummary("latency_sensitive", "h1-h2", standard_links=("h1-r1", "r1-h2"))
    forecasts = {"h1-h2": _forecast("h1-h2", 0.3), "r1-h2": _forecast("r1-h2", 0.9, horizon_ms=200.0),
                 "h1-r1": _forecast("h1-r1", 0.6)}
    decision = decide(flow, forecasts, now_ms=1000.0)
    assert decision.mirror
    assert decision.avoid_paths == ("h1-r1", "r1-h2")
    assert decision.score == pytest.approx(0.9)
    assert "path r1-h2 congests within 200 ms with p=0.90" in decision.reason


def test_missing_or_stale_forecasts_do_not_mirror() -> None:
    flow = FlowSummary("latency_sensitive", "direct")
    missing = decide(flow, {"other": _forecast("other", 0.99)}, now_ms=1000.0)
    assert not missing.mirror and missing.reason == "latency-sensitive flow; no forecast for path direct; not mirrored"
    stale = decide(flow, {"direct": _forecast("direct", 0.99, time_ms=0.0)}, now_ms=1000.0)
    assert not stale.mirror and "older than 500 ms" in stale.reason


def test_other_classes_are_not_mirrored_and_any_flow_record_will_do() -> None:
    @dataclass(frozen=True)
    class FlowRecord:  # e.g. the flow table's own type: decide() only reads two attributes
        flow_class: str
        standard_path: str
        five_tuple: str = "10.0.0.1:1234 -> 10.0.0.2:80/tcp"

    decision = decide(FlowRecord("interactive_video", "direct"), {"direct": _forecast("direct", 0.9)}, now_ms=1000.0)
    assert not decision.mirror and "'interactive_video' is not mirrored" in decision.reason
    assert decide(FlowRecord("latency_sensitive", "direct"), {"direct": _forecast("direct", 0.9)}, now_ms=1000.0).mirror


def test_an_enum_flow_class_works_like_its_string() -> None:
    class FlowClass(StrEnum):  # as analysis.classify defines it
        LATENCY_SENSITIVE = "latency_sensitive"
        BULK = "bulk"

    forecasts = {"direct": _forecast("direct", 0.9)}
    assert decide(FlowSummary(FlowClass.LATENCY_SENSITIVE, "direct"), forecasts, now_ms=1000.0).mirror
    assert not decide(FlowSummary(FlowClass.BULK, "direct"), forecasts, now_ms=1000.0).mirror
