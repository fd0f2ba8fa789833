"""Per-path features for the congestion predictor, computed from a stream of telemetry samples.

Pure: the extractor keeps a little state per path (EWMAs, last sample) and takes time from the
samples themselves, never from a clock. The same code runs on synthetic traces, on recorded lab
telemetry and in the node (fed from FEEDBACK reports).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

# Features that come from application metadata (announced bulk transfers). Dropping them is the
# ablation that shows how much of the prediction is "application-aware" rather than reactive.
METADATA_FEATURES: tuple[str, ...] = (
    "announced_pending_log",
    "announced_pending_load",
    "announced_active_log",
    "announced_active_load",
    "announced_pending_quiet",
    "announced_fresh_log",
    "announced_fresh_quiet",
)

NETWORK_FEATURES: tuple[str, ...] = (
    "delay_log",
    "congested_now",
    "delay_ewma_fast",
    "delay_ewma_slow",
    "delay_trend",
    "delay_gradient",
    "jitter",
    "loss_ewma",
    "utilisation",
    "utilisation_ewma",
    "utilisation_gradient",
    "since_congested_log",
)

# Features read from the other paths (FeatureExtractor only): paths that share a bottleneck congest
# together, and one of them often shows the queue a sample before the others do.
PEER_FEATURES: tuple[str, ...] = (
    "peer_delay_log",
    "peer_congested",
    "peer_recent",
)


@dataclass(frozen=True, slots=True)
class PathTelemetry:
    """One telemetry sample of one path, as the feedback loop (or a simulator) reports it.

    `queue_delay_ms` is the one-way delay above the path's observed minimum: two hosts' clocks
    differ, so only the relative delay is meaningful (as in delay-based congestion control).
    """

    path_id: str
    time_ms: float
    queue_delay_ms: float
    loss_rate: float = 0.0
    # Fraction of the path capacity carried in the sample interval; None when capacity is unknown.
    utilisation: float | None = None
    capacity_bps: float | None = None
    # Application metadata: bytes of announced bulk transfers (e.g. HTTP Content-Length) that are
    # known to be about to start on this path, and bytes still to send of those already started.
    announced_pending_bytes: int = 0
    announced_active_bytes: int = 0


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    horizon_ms: float = 100.0
    # The congestion threshold of the label; the extractor uses it for `congested_now`.
    threshold_ms: float = 2.0
    # EWMA time constants (ms). Fast follows the current queue; slow is the recent "normal".
    fast_tau_ms: float = 30.0
    slow_tau_ms: float = 300.0
    gradient_tau_ms: float = 30.0
    loss_tau_ms: float = 100.0
    include_metadata: bool = True
    # Shared-bottleneck scores between paths: weight kept per sample of the path (a memory of
    # ~2000 samples, under two minutes at 20 samples/s), and pseudo-samples that keep a score
    # near 0 until a pair has been congested together a few times.
    peer_memory: float = 0.9995
    peer_prior: float = 20.0


_SINCE_CAP_MS = 10_000.0
_SINCE_CAP_LOG = math.log1p(_SINCE_CAP_MS)


def _decay(dt_ms: float, tau_ms: float) -> float:
    """EWMA weight of the old value after dt: time-based so irregular sampling stays consistent."""
    return math.exp(-dt_ms / tau_ms) if dt_ms > 0 else 1.0


class PathFeatureExtractor:
    """Turns the telemetry samples of one path into a feature dict (river-friendly)."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._last_time_ms: float | None = None
        self._last_delay_ms = 0.0
        self._last_utilisation = 0.0
        self._delay_fast = 0.0
        self._delay_slow = 0.0
        self._delay_gradient = 0.0  # ms of queueing delay per 10 ms
        self._jitter = 0.0
        self._loss = 0.0
        self._utilisation_ewma = 0.0
        self._utilisation_gradient = 0.0
        self._last_congested_ms: float | None = None
        # (time, bytes) of each rise of the announced bytes within the last horizon: a transfer
        # announced moments ago has not filled the queue yet, one announced seconds ago has.
        self._last_announced = 0
        self._fresh: deque[tuple[float, int]] = deque()

    @property
    def names(self) -> tuple[str, ...]:
        return NETWORK_FEATURES + (METADATA_FEATURES if self.config.include_metadata else ())

    def update(self, sample: PathTelemetry) -> dict[str, float]:
        cfg = self.config
        delay = max(0.0, sample.queue_delay_ms)
        utilisation = sample.utilisation if sample.utilisation is not None else 0.0
        if self._last_time_ms is None:
            self._delay_fast = self._delay_slow = delay
            self._utilisation_ewma = utilisation
            dt = 0.0
        else:
            dt = sample.time_ms - self._last_time_ms
            if dt < 0:
                raise ValueError(
                    f"telemetry for path {sample.path_id} went back in time: "
                    f"{sample.time_ms} ms after {self._last_time_ms} ms"
                )
            fast = _decay(dt, cfg.fast_tau_ms)
            slow = _decay(dt, cfg.slow_tau_ms)
            grad = _decay(dt, cfg.gradient_tau_ms)
            self._delay_fast = fast * self._delay_fast + (1 - fast) * delay
            self._delay_slow = slow * self._delay_slow + (1 - slow) * delay
            if dt > 0:
                # Slopes per 10 ms so the numbers read like "ms of queue added per sample".
                slope = (delay - self._last_delay_ms) * 10.0 / dt
                self._delay_gradient = grad * self._delay_gradient + (1 - grad) * slope
                self._jitter = fast * self._jitter + (1 - fast) * abs(delay - self._last_delay_ms)
                util_slope = (utilisation - self._last_utilisation) * 10.0 / dt
                self._utilisation_gradient = grad * self._utilisation_gradient + (1 - grad) * util_slope
            self._utilisation_ewma = fast * self._utilisation_ewma + (1 - fast) * utilisation
        loss_keep = _decay(dt, cfg.loss_tau_ms) if self._last_time_ms is not None else 0.0
        self._loss = loss_keep * self._loss + (1 - loss_keep) * sample.loss_rate
        congested = delay > cfg.threshold_ms
        if congested:
            self._last_congested_ms = sample.time_ms
        self._last_time_ms = sample.time_ms
        self._last_delay_ms = delay
        self._last_utilisation = utilisation

        # "Recently congested" predicts re-congestion (TCP sawtooth, bursts); capped at 10 s.
        since = (_SINCE_CAP_MS if self._last_congested_ms is None
                 else min(_SINCE_CAP_MS, sample.time_ms - self._last_congested_ms))
        features = {
            "delay_log": math.log1p(delay),
            "congested_now": 1.0 if congested else 0.0,
            "delay_ewma_fast": self._delay_fast,
            "delay_ewma_slow": self._delay_slow,
            "delay_trend": self._delay_fast - self._delay_slow,
            "delay_gradient": self._delay_gradient,
            "jitter": self._jitter,
            "loss_ewma": self._loss,
            "utilisation": utilisation,
            "utilisation_ewma": self._utilisation_ewma,
            "utilisation_gradient": self._utilisation_gradient,
            "since_congested_log": math.log1p(since),
        }
        if cfg.include_metadata:
            features.update(self._metadata_features(sample))
        return features

    def _metadata_features(self, sample: PathTelemetry) -> dict[str, float]:
        pending = float(max(0, sample.announced_pending_bytes))
        active = float(max(0, sample.announced_active_bytes))
        announced = int(pending + active)
        if announced > self._last_announced:
            self._fresh.append((sample.time_ms, announced - self._last_announced))
        self._last_announced = announced
        while self._fresh and self._fresh[0][0] < sample.time_ms - self.config.horizon_ms:
            self._fresh.popleft()
        fresh_log = math.log1p(sum(n for _, n in self._fresh) / 1e5)
        quiet = 0.0 if sample.queue_delay_ms > self.config.threshold_ms else 1.0
        if sample.capacity_bps:
            # Load the announced bytes put on the path within the horizon: 1.0 fills it alone.
            budget_bytes = sample.capacity_bps / 8.0 * self.config.horizon_ms / 1000.0
            pending_load = min(pending / budget_bytes, 10.0)
            active_load = min(active / budget_bytes, 10.0)
        else:
            pending_load = active_load = 0.0
        return {
            "announced_pending_log": math.log1p(pending / 1e5),
            "announced_pending_load": pending_load,
            "announced_active_log": math.log1p(active / 1e5),
            "announced_active_load": active_load,
            # A linear model cannot form "bulk coming AND path quiet now" by itself; that is the
            # case where metadata adds lead time, so give it the product.
            "announced_pending_quiet": math.log1p(pending / 1e5) * quiet,
            # Bytes announced within the last horizon (new transfers), and the same on a quiet path.
            "announced_fresh_log": fresh_log,
            "announced_fresh_quiet": fresh_log * quiet,
        }


class FeatureExtractor:
    """One PathFeatureExtractor per path id, created on first sight, plus features from its peers.

    Which paths share a bottleneck is learned from the telemetry itself, not from the topology:
    each ordered pair of paths keeps a decayed Jaccard score of "congested at the same time" (this
    path's sample against the other's latest one). It uses only current delays, never labels, and
    it follows routing changes through the decay.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._paths: dict[str, PathFeatureExtractor] = {}
        # path -> (latest delay in ms, congested then, recency of its last congestion in [0, 1])
        self._latest: dict[str, tuple[float, bool, float]] = {}
        # path -> other path -> [decayed count of both congested, decayed count of either congested]
        self._together: dict[str, dict[str, list[float]]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A predictor pickled before the peer features existed has no peer state: start it empty.
        state.setdefault("_latest", {})
        state.setdefault("_together", {path_id: {} for path_id in state.get("_paths", {})})
        self.__dict__.update(state)

    @property
    def names(self) -> tuple[str, ...]:
        return NETWORK_FEATURES + PEER_FEATURES + (METADATA_FEATURES if self.config.include_metadata else ())

    def update(self, sample: PathTelemetry) -> dict[str, float]:
        path_id = sample.path_id
        path = self._paths.get(path_id)
        if path is None:
            path = self._paths[path_id] = PathFeatureExtractor(self.config)
            self._together[path_id] = {}
        features = path.update(sample)
        congested = features["congested_now"] > 0.5
        recency = 1.0 - features["since_congested_log"] / _SINCE_CAP_LOG
        self._latest[path_id] = (max(0.0, sample.queue_delay_ms), congested, recency)
        keep = self.config.peer_memory
        prior = self.config.peer_prior
        together = self._together[path_id]
        peer_delay = peer_congested = peer_recent = 0.0
        for other_id, (other_delay, other_congested, other_recency) in self._latest.items():
            if other_id == path_id:
                continue
            counts = together.get(other_id)
            if counts is None:
                counts = together[other_id] = [0.0, 0.0]
            counts[0] = counts[0] * keep + (1.0 if congested and other_congested else 0.0)
            counts[1] = counts[1] * keep + (1.0 if congested or other_congested else 0.0)
            similarity = counts[0] / (counts[1] + prior)
            if similarity > 0.0:
                peer_delay = max(peer_delay, similarity * math.log1p(other_delay))
                peer_recent = max(peer_recent, similarity * other_recency)
                if other_congested:
                    peer_congested = max(peer_congested, similarity)
        features["peer_delay_log"] = peer_delay
        features["peer_congested"] = peer_congested
        features["peer_recent"] = peer_recent
        return features
