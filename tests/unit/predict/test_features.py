"""Per-path features on small hand-made telemetry sequences."""

from __future__ import annotations

import math
import pickle

import pytest

from topomirror.analysis.features import (
    METADATA_FEATURES,
    PEER_FEATURES,
    FeatureConfig,
    FeatureExtractor,
    PathFeatureExtractor,
    PathTelemetry,
)


def _sample(time_ms: float, delay_ms: float, path: str = "p", **extra: float) -> PathTelemetry:
    return PathTelemetry(path_id=path, time_ms=time_ms, queue_delay_ms=delay_ms, **extra)  # type: ignore[arg-type]


def test_flat_idle_path_has_zero_trend_gradient_and_jitter() -> None:
    extractor = PathFeatureExtractor()
    for i in range(50):
        features = extractor.update(_sample(i * 10.0, 0.5, utilisation=0.3, capacity_bps=1e8))
    assert features["delay_ewma_fast"] == pytest.approx(0.5)
    assert features["delay_trend"] == pytest.approx(0.0, abs=1e-9)
    assert features["delay_gradient"] == pytest.approx(0.0, abs=1e-9)
    assert features["jitter"] == pytest.approx(0.0, abs=1e-9)
    assert features["congested_now"] == 0.0
    assert features["utilisation_ewma"] == pytest.approx(0.3)


def test_rising_delay_shows_positive_trend_and_gradient() -> None:
    extractor = PathFeatureExtractor()
    for i in range(30):
        features = extractor.update(_sample(i * 10.0, 0.1 * i))
    # 0.1 ms more queue per 10 ms sample: the gradient converges to that slope.
    assert features["delay_gradient"] == pytest.approx(0.1, rel=0.05)
    assert features["delay_trend"] > 0
    assert features["delay_ewma_fast"] < 2.9  # lags the ramp
    assert features["congested_now"] == 1.0  # 2.9 ms > 2 ms threshold


def test_alternating_delay_is_jitter_not_trend() -> None:
    extractor = PathFeatureExtractor()
    for i in range(100):
        features = extractor.update(_sample(i * 10.0, 1.0 if i % 2 else 0.0))
    assert features["jitter"] == pytest.approx(1.0, rel=0.01)
    assert abs(features["delay_trend"]) < 0.1


def test_gradient_is_per_10_ms_whatever_the_sampling_interval() -> None:
    coarse, fine = PathFeatureExtractor(), PathFeatureExtractor()
    for i in range(40):
        a = coarse.update(_sample(i * 20.0, 0.2 * i))
    for i in range(80):
        b = fine.update(_sample(i * 10.0, 0.1 * i))
    assert a["delay_gradient"] == pytest.approx(b["delay_gradient"], rel=0.05)


def test_loss_and_time_since_congestion() -> None:
    extractor = PathFeatureExtractor()
    extractor.update(_sample(0.0, 5.0, loss_rate=0.1))
    features = extractor.update(_sample(100.0, 0.0))
    assert features["since_congested_log"] == pytest.approx(math.log1p(100.0))
    assert 0.0 < features["loss_ewma"] < 0.1
    never = PathFeatureExtractor().update(_sample(0.0, 0.0))
    assert never["since_congested_log"] == pytest.approx(math.log1p(10_000.0))


def test_announced_bytes_normalised_by_capacity_times_horizon() -> None:
    extractor = PathFeatureExtractor(FeatureConfig(horizon_ms=100.0))
    # 100 Mbit/s for 100 ms is 1.25 MB: 2.5 MB announced is twice what the path carries in H.
    features = extractor.update(_sample(0.0, 0.0, capacity_bps=100e6, announced_pending_bytes=2_500_000,
                                        announced_active_bytes=625_000))
    assert features["announced_pending_load"] == pytest.approx(2.0)
    assert features["announced_active_load"] == pytest.approx(0.5)
    assert features["announced_pending_log"] == pytest.approx(math.log1p(25.0))
    assert features["announced_pending_quiet"] == pytest.approx(math.log1p(25.0))
    # Unknown capacity: no load, but the byte count still speaks.
    unknown = PathFeatureExtractor().update(_sample(0.0, 3.0, announced_pending_bytes=100_000))
    assert unknown["announced_pending_load"] == 0.0
    assert unknown["announced_pending_log"] == pytest.approx(math.log(2.0))
    assert unknown["announced_pending_quiet"] == 0.0  # path already congested


def test_metadata_features_can_be_dropped_for_the_ablation() -> None:
    with_metadata = PathFeatureExtractor().update(_sample(0.0, 0.0, announced_pending_bytes=10**6))
    without = PathFeatureExtractor(FeatureConfig(include_metadata=False)).update(
        _sample(0.0, 0.0, announced_pending_bytes=10**6))
    assert set(METADATA_FEATURES) <= set(with_metadata)
    assert not set(METADATA_FEATURES) & set(without)
    assert set(without) == set(with_metadata) - set(METADATA_FEATURES)
    assert tuple(without) == PathFeatureExtractor(FeatureConfig(include_metadata=False)).names


def test_paths_keep_separate_state_and_time_must_not_go_back() -> None:
    extractor = FeatureExtractor()
    for i in range(20):
        busy = extractor.update(_sample(i * 10.0, 8.0, path="busy"))
        quiet = extractor.update(_sample(i * 10.0, 0.0, path="quiet"))
    assert busy["delay_ewma_fast"] == pytest.approx(8.0)
    assert quiet["delay_ewma_fast"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="back in time"):
        extractor.update(_sample(50.0, 0.0, path="busy"))


def test_fresh_announcement_counts_only_bytes_announced_within_the_horizon() -> None:
    extractor = PathFeatureExtractor(FeatureConfig(horizon_ms=100.0, threshold_ms=5.0))
    extractor.update(_sample(0.0, 0.5))
    fresh = extractor.update(_sample(50.0, 0.5, announced_pending_bytes=4_000_000))
    assert fresh["announced_fresh_log"] == pytest.approx(math.log1p(40.0))
    assert fresh["announced_fresh_quiet"] == fresh["announced_fresh_log"]  # the path is quiet
    # Still announced 200 ms later, but no longer new: only the pending features keep it.
    later = extractor.update(_sample(250.0, 8.0, announced_pending_bytes=4_000_000))
    assert later["announced_fresh_log"] == 0.0
    assert later["announced_pending_log"] > 0


def test_peers_that_congest_together_lend_each_other_their_queue() -> None:
    # "a" and "b" share a bottleneck (congested in the same bursts); "c" has a queue of its own.
    extractor = FeatureExtractor(FeatureConfig(threshold_ms=5.0))
    for i in range(400):
        burst = (i // 20) % 3 == 0
        a = extractor.update(_sample(i * 10.0, 12.0 if burst else 0.3, path="a"))
        b = extractor.update(_sample(i * 10.0 + 3.0, 11.0 if burst else 0.2, path="b"))
        c = extractor.update(_sample(i * 10.0 + 6.0, 9.0 if (i // 20) % 3 == 1 else 0.1, path="c"))
    # The last step was in a burst of "c" only: "a" and "b" are quiet, and so is what they read from
    # each other; "c" reads nothing from peers it never congested with.
    assert a["peer_congested"] == b["peer_congested"] == 0.0
    assert c["peer_congested"] == 0.0 and c["peer_delay_log"] == 0.0
    # One more sample in a shared burst: "b" sees "a" congested (similarity near 1, less the prior).
    extractor.update(_sample(4000.0, 12.0, path="a"))
    b = extractor.update(_sample(4003.0, 0.2, path="b"))
    assert 0.8 < b["peer_congested"] <= 1.0
    assert b["peer_delay_log"] == pytest.approx(b["peer_congested"] * math.log1p(12.0))
    assert 0.0 < b["peer_recent"] <= b["peer_congested"]
    assert set(extractor.names) == set(b)


def test_peer_features_need_no_metadata_and_stay_in_the_ablation() -> None:
    assert not set(PEER_FEATURES) & set(METADATA_FEATURES)
    extractor = FeatureExtractor(FeatureConfig(include_metadata=False))
    features = extractor.update(_sample(0.0, 0.0))
    assert set(PEER_FEATURES) <= set(features)
    assert tuple(features) == extractor.names
    assert all(features[name] == 0.0 for name in PEER_FEATURES)  # a lone path has no peers


def test_an_extractor_pickled_before_the_peer_features_still_updates() -> None:
    extractor = FeatureExtractor()
    extractor.update(_sample(0.0, 1.0, path="a"))
    state = dict(extractor.__dict__)
    del state["_latest"], state["_together"]  # what an older pickle holds
    restored = FeatureExtractor.__new__(FeatureExtractor)
    restored.__setstate__(state)
    features = restored.update(_sample(10.0, 1.0, path="a"))
    assert features["delay_ewma_fast"] == pytest.approx(1.0) and features["peer_delay_log"] == 0.0
    assert pickle.loads(pickle.dumps(restored)).update(_sample(20.0, 1.0, path="b"))["peer_congested"] == 0.0
