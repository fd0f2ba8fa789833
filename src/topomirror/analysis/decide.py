"""The mirror decision: should this new flow get a mirror path, and what must that path avoid?

Pure: a flow summary and the current forecasts in, a Decision (with a human-readable reason that
`explain` shows) out. The clock is passed in as `now_ms`, only to judge whether a forecast is
too old to trust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from topomirror.analysis.predict import PathForecast

LATENCY_SENSITIVE = "latency_sensitive"
BULK = "bulk"
UNKNOWN = "unknown"


class FlowForDecision(Protocol):
    """What decide() reads from a flow; the flow table's own record can satisfy it directly."""

    @property
    def flow_class(self) -> str: ...

    @property
    def standard_path(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FlowSummary:
    flow_class: str
    standard_path: str
    # Links of the standard path, where known: a forecast for any of them counts as well.
    standard_links: tuple[str, ...] = ()
    flow_id: str = ""


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    mirror_threshold: float = 0.5
    # An unclassified flow might be bulk: duplicating it doubles load on a congesting network, so
    # it needs stronger evidence.
    unknown_threshold: float = 0.8
    # A forecast older than this is ignored: it no longer describes the path.
    max_forecast_age_ms: float = 500.0


@dataclass(frozen=True, slots=True)
class Decision:
    mirror: bool
    reason: str
    score: float  # the highest congestion probability on the flow's standard path (0 if unknown)
    avoid_paths: tuple[str, ...] = ()  # paths/links the mirror must avoid (forecast to congest)
    forecasts_used: tuple[str, ...] = field(default=())


def _class_label(flow_class: str) -> str:
    return flow_class.replace("_", "-")


def decide(flow: FlowForDecision, path_forecasts: Mapping[str, PathForecast], now_ms: float,
           config: DecisionConfig | None = None) -> Decision:
    cfg = config or DecisionConfig()
    flow_class = str(flow.flow_class)  # plain strings or classify.FlowClass (a StrEnum) alike
    if flow_class == BULK:
        return Decision(False, "bulk flow; never mirrored (a copy would add load where congestion is forming)", 0.0)

    links: Sequence[str] = getattr(flow, "standard_links", ())
    candidates = [flow.standard_path, *links]
    fresh: list[PathForecast] = []
    stale: list[str] = []
    for path_id in dict.fromkeys(candidates):  # keep order, drop duplicates
        forecast = path_forecasts.get(path_id)
        if forecast is None:
            continue
        if now_ms - forecast.time_ms > cfg.max_forecast_age_ms:
            stale.append(path_id)
        else:
            fresh.append(forecast)
    label = _class_label(flow_class)
    if not fresh:
        why = (f"forecast for {', '.join(stale)} older than {cfg.max_forecast_age_ms:g} ms" if stale
               else f"no forecast for path {flow.standard_path}")
        return Decision(False, f"{label} flow; {why}; not mirrored", 0.0)

    worst = max(fresh, key=lambda f: f.probability)
    threshold = cfg.mirror_threshold if flow_class == LATENCY_SENSITIVE else cfg.unknown_threshold
    congesting = tuple(f.path_id for f in fresh if f.probability >= threshold)
    used = tuple(f.path_id for f in fresh)
    outlook = (f"path {worst.path_id} congests within {worst.horizon_ms:g} ms with p={worst.probability:.2f} "
               f"({worst.method})")
    if flow_class not in (LATENCY_SENSITIVE, UNKNOWN):
        return Decision(False, f"flow class {flow_class!r} is not mirrored; {outlook}", worst.probability, (), used)
    if congesting:
        return Decision(True, f"{label} flow; {outlook}", worst.probability, congesting, used)
    return Decision(False, f"{label} flow; {outlook}, below threshold {threshold:g}; not mirrored",
                    worst.probability, (), used)
