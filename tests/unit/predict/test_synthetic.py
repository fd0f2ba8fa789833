"""The synthetic fluid-queue generator: deterministic, and faithful to its flow-size CDFs."""

from __future__ import annotations

import numpy as np
import pytest

from topomirror.analysis.synthetic import (
    HADOOP_CDF,
    WEBSEARCH_CDF,
    FlowSizeDistribution,
    PathConfig,
    SyntheticConfig,
    generate,
)

SHORT = SyntheticConfig(duration_s=5.0, paths=(PathConfig(path_id="p1", bulk_per_s=2.0),
                                               PathConfig(path_id="p2", capacity_bps=50e6)))


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    first = generate(SHORT, seed=7)
    again = generate(SHORT, seed=7)
    other = generate(SHORT, seed=8)
    assert first.samples == again.samples
    assert first.bulk_transfers == again.bulk_transfers
    assert first.samples != other.samples


def test_samples_every_10_ms_per_path_in_time_order() -> None:
    trace = generate(SHORT, seed=1)
    times = [s.time_ms for s in trace.samples]
    assert times == sorted(times)
    for path in ("p1", "p2"):
        path_times = np.array([s.time_ms for s in trace.samples if s.path_id == path])
        assert len(path_times) == 500
        assert np.allclose(np.diff(path_times), 10.0)


def test_samples_are_physically_sane() -> None:
    config = SyntheticConfig(duration_s=20.0, paths=(PathConfig(path_id="p", queue_limit_ms=15.0, bulk_per_s=1.0),))
    trace = generate(config, seed=3)
    delays = np.array([s.queue_delay_ms for s in trace.samples])
    assert delays.min() >= 0.0
    assert delays.max() <= 15.0 + 1e-9  # never beyond the drop-tail buffer
    assert (delays > 2.0).any(), "bulk transfers should congest the link sometimes"
    assert all(0.0 <= s.loss_rate <= 1.0 and 0.0 <= (s.utilisation or 0.0) <= 1.0 for s in trace.samples)
    assert any(s.loss_rate > 0 for s in trace.samples)


def test_announced_bytes_are_pending_only_between_announcement_and_start() -> None:
    config = SyntheticConfig(duration_s=10.0, paths=(PathConfig(path_id="p", bulk_per_s=1.0, background_load=0.0),))
    trace = generate(config, seed=5)
    assert trace.bulk_transfers
    for sample in trace.samples:
        expected = sum(b.size_bytes for b in trace.bulk_transfers if b.announce_ms <= sample.time_ms < b.start_ms)
        assert sample.announced_pending_bytes == expected
    for transfer in trace.bulk_transfers:
        assert 20.0 <= transfer.start_ms - transfer.announce_ms <= 80.0


def test_bulk_slow_start_builds_congestion_over_tens_of_ms() -> None:
    # One bulk flow on an idle link: the queue must not jump at once, it builds over a few RTTs.
    config = SyntheticConfig(duration_s=3.0, paths=(PathConfig(path_id="p", bulk_per_s=0.6, background_load=0.0,
                                                               bulk_min_bytes=10e6, bulk_max_bytes=10e6),))
    trace = generate(config, seed=2)
    first_start = min(b.start_ms for b in trace.bulk_transfers)
    onset = next(s.time_ms for s in trace.samples if s.time_ms > first_start and s.queue_delay_ms > 2.0)
    assert 20.0 <= onset - first_start <= 120.0


@pytest.mark.parametrize("cdf", [WEBSEARCH_CDF, HADOOP_CDF], ids=["websearch", "hadoop"])
def test_sampled_sizes_follow_the_cdf(cdf: tuple[tuple[float, float], ...]) -> None:
    distribution = FlowSizeDistribution(cdf)
    sizes = np.sort(distribution.sample(np.random.default_rng(11), 20_000))
    empirical = np.arange(1, sizes.size + 1) / sizes.size
    theoretical = np.array([distribution.cdf(x) for x in sizes])
    # Kolmogorov-Smirnov statistic; the 1 % critical value for n = 20000 is about 0.0115.
    ks = float(np.max(np.abs(empirical - theoretical)))
    assert ks < 0.0115
    # Each published point holds (within sampling error).
    for size, percent in cdf[1:-1]:
        assert abs(float(np.mean(sizes <= size)) - percent / 100.0) < 0.015
    assert abs(float(sizes.mean()) / distribution.mean_bytes - 1.0) < 0.05


def test_a_cdf_must_be_a_cdf() -> None:
    with pytest.raises(ValueError, match="CDF"):
        FlowSizeDistribution(((0, 0), (100, 60), (200, 50), (300, 100)))
