"""A synthetic fluid-queue generator: fast, deterministic traces for predictor experiments.

One bottleneck link per path (capacity C, drop-tail queue limited in bytes) carries:
- background flows arriving as a Poisson process with sizes from a measured workload CDF
  (WebSearch by default, Hadoop as an option; DESIGN.md section 6), whose sizes are *not* known;
- "announced" bulk transfers whose size is known a lead time (20-80 ms) before they start to
  send, as an HTTP response's Content-Length tells the node before the body follows.

Flows are TCP-like fluids: each sends cwnd / RTT (capped by its access rate), cwnd grows by slow
start then additive increase, and halves on loss (at most once per RTT). The queue grows when the
offered rate exceeds C, so a bulk flow's slow start builds congestion over a few RTTs (tens of ms).
Every `sample_ms` one PathTelemetry sample per path is emitted. Time is simulated, randomness
comes from a seeded numpy Generator: the same config and seed give the same trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from topomirror.analysis.features import PathTelemetry

# (bytes, cumulative %) as published (DCTCP WebSearch, Facebook Hadoop).
WEBSEARCH_CDF: tuple[tuple[float, float], ...] = (
    (0, 0), (10_000, 15), (20_000, 20), (30_000, 30), (50_000, 40), (80_000, 53), (200_000, 60),
    (1e6, 70), (2e6, 80), (5e6, 90), (1e7, 97), (3e7, 100),
)
HADOOP_CDF: tuple[tuple[float, float], ...] = (
    (0, 0), (100, 1), (200, 2), (300, 5), (350, 15), (400, 20), (500, 30), (600, 40), (700, 50),
    (1000, 60), (2000, 67), (7000, 70), (30_000, 72), (50_000, 82), (80_000, 87), (120_000, 90),
    (300_000, 95), (1e6, 97.5), (2e6, 99), (1e7, 100),
)
WORKLOADS: dict[str, tuple[tuple[float, float], ...]] = {"websearch": WEBSEARCH_CDF, "hadoop": HADOOP_CDF}

MSS_BYTES = 1460
INITIAL_CWND_BYTES = 10 * MSS_BYTES  # RFC 6928
MIN_FLOW_BYTES = 64


class FlowSizeDistribution:
    """Inverse-transform sampling from a piecewise-linear CDF."""

    def __init__(self, cdf: tuple[tuple[float, float], ...]) -> None:
        sizes = [float(s) for s, _ in cdf]
        percents = [float(p) for _, p in cdf]
        if percents[0] != 0 or percents[-1] != 100 or any(b < a for a, b in zip(percents, percents[1:], strict=False)):
            raise ValueError("a flow-size CDF must start at 0 %, end at 100 % and never decrease")
        self.sizes = np.asarray(sizes)
        self.quantiles = np.asarray(percents) / 100.0

    def sample(self, rng: np.random.Generator, count: int | None = None) -> np.ndarray:
        u = rng.random(count if count is not None else 1)
        return np.maximum(np.interp(u, self.quantiles, self.sizes), MIN_FLOW_BYTES)

    def cdf(self, size_bytes: float) -> float:
        return float(np.interp(size_bytes, self.sizes, self.quantiles))

    @property
    def mean_bytes(self) -> float:
        # Uniform within each linear segment: the segment's mass times its midpoint.
        mass = np.diff(self.quantiles)
        mid = (self.sizes[:-1] + self.sizes[1:]) / 2.0
        return float(np.sum(mass * mid))


@dataclass(frozen=True, slots=True)
class PathConfig:
    path_id: str = "direct"
    capacity_bps: float = 100e6
    base_rtt_ms: float = 10.0
    queue_limit_ms: float = 20.0  # drop-tail buffer, expressed as time at capacity
    background_load: float = 0.3  # offered load of background flows, fraction of capacity
    workload: str = "websearch"
    # Access-rate cap per background flow as a fraction of capacity: a single web flow rarely
    # saturates a shared bottleneck alone.
    background_rate_cap: float = 0.5
    bulk_per_s: float = 0.4  # announced bulk transfers per second
    bulk_min_bytes: float = 2e6
    bulk_max_bytes: float = 20e6
    # Bulk senders sit behind faster access links than the bottleneck (VM NICs): they can overrun it.
    bulk_rate_cap: float = 4.0
    # Share of background flows that pass through the node itself. The node measures utilisation
    # from the traffic it carries; cross traffic from other hosts shows only as queueing delay.
    visible_background_fraction: float = 0.5
    lead_min_ms: float = 20.0
    lead_max_ms: float = 80.0


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    duration_s: float = 60.0
    tick_ms: float = 1.0
    sample_ms: float = 10.0
    paths: tuple[PathConfig, ...] = (PathConfig(),)


@dataclass(frozen=True, slots=True)
class BulkTransfer:
    path_id: str
    announce_ms: float
    start_ms: float
    size_bytes: int


@dataclass(frozen=True, slots=True)
class SyntheticTrace:
    config: SyntheticConfig
    seed: int
    samples: tuple[PathTelemetry, ...]  # time-ordered, paths interleaved
    bulk_transfers: tuple[BulkTransfer, ...] = field(default=())
    background_flows: int = 0


class _Flow:
    """Mutable fluid state of one TCP-like flow (internal to the simulation)."""

    __slots__ = ("remaining", "cwnd", "ssthresh", "rate_cap", "announced", "visible", "last_loss_ms", "sent")

    def __init__(self, size: float, rate_cap: float, announced: bool, visible: bool) -> None:
        self.remaining = size
        self.cwnd = float(INITIAL_CWND_BYTES)
        self.ssthresh = math.inf
        self.rate_cap = rate_cap  # bytes per ms
        self.announced = announced
        self.visible = visible
        self.last_loss_ms = -math.inf
        self.sent = 0.0  # bytes sent in the current tick


def _poisson_times(rng: np.random.Generator, rate_per_s: float, duration_ms: float) -> list[float]:
    if rate_per_s <= 0:
        return []
    count = rng.poisson(rate_per_s * duration_ms / 1000.0)
    return sorted(float(t) for t in rng.uniform(0.0, duration_ms, count))


def _simulate_path(cfg: PathConfig, sim: SyntheticConfig, rng: np.random.Generator) -> tuple[
        list[PathTelemetry], list[BulkTransfer], int]:
    duration_ms = sim.duration_s * 1000.0
    tick = sim.tick_ms
    capacity = cfg.capacity_bps / 8.0 / 1000.0  # bytes per ms
    queue_limit = capacity * cfg.queue_limit_ms
    sizes = FlowSizeDistribution(WORKLOADS[cfg.workload])

    background_rate = cfg.background_load * capacity * 1000.0 / sizes.mean_bytes
    background_times = _poisson_times(rng, background_rate, duration_ms)
    background_sizes = sizes.sample(rng, len(background_times)) if background_times else np.zeros(0)
    background_visible = rng.random(len(background_times)) < cfg.visible_background_fraction

    bulk: list[BulkTransfer] = []
    for announce in _poisson_times(rng, cfg.bulk_per_s, duration_ms):
        lead = float(rng.uniform(cfg.lead_min_ms, cfg.lead_max_ms))
        size = math.exp(rng.uniform(math.log(cfg.bulk_min_bytes), math.log(cfg.bulk_max_bytes)))
        bulk.append(BulkTransfer(cfg.path_id, announce, announce + lead, int(size)))

    flows: list[_Flow] = []
    samples: list[PathTelemetry] = []
    queue = 0.0
    next_background = next_bulk_start = next_announce = 0
    bulk_by_start = sorted(bulk, key=lambda b: b.start_ms)
    pending_bytes = 0  # announced, not started yet
    interval_arrived = interval_dropped = interval_served = interval_visible_served = 0.0
    next_sample = sim.sample_ms
    ticks = int(round(duration_ms / tick))
    for step in range(1, ticks + 1):
        now = step * tick
        while next_background < len(background_times) and background_times[next_background] <= now:
            flows.append(_Flow(float(background_sizes[next_background]), cfg.background_rate_cap * capacity,
                               announced=False, visible=bool(background_visible[next_background])))
            next_background += 1
        while next_announce < len(bulk) and bulk[next_announce].announce_ms <= now:
            pending_bytes += bulk[next_announce].size_bytes
            next_announce += 1
        while next_bulk_start < len(bulk_by_start) and bulk_by_start[next_bulk_start].start_ms <= now:
            pending_bytes -= bulk_by_start[next_bulk_start].size_bytes
            flows.append(_Flow(float(bulk_by_start[next_bulk_start].size_bytes), cfg.bulk_rate_cap * capacity,
                               announced=True, visible=True))
            next_bulk_start += 1

        rtt = cfg.base_rtt_ms + queue / capacity
        arrived = visible_arrived = 0.0
        for flow in flows:
            sent = min(flow.cwnd / rtt, flow.rate_cap) * tick
            sent = min(sent, flow.remaining)
            flow.sent = sent
            flow.remaining -= sent
            arrived += sent
            if flow.visible:
                visible_arrived += sent
            # Window growth per elapsed RTT fraction: doubling in slow start, +1 MSS afterwards.
            if flow.cwnd < flow.ssthresh:
                flow.cwnd *= 2.0 ** (tick / rtt)
            else:
                flow.cwnd += MSS_BYTES * tick / rtt
            # A window beyond what the access rate can use is never filled (cwnd validation).
            flow.cwnd = min(flow.cwnd, flow.rate_cap * rtt * 2.0)
        served = min(queue + arrived, capacity * tick)
        queue = queue + arrived - served
        dropped = 0.0
        if queue > queue_limit:
            dropped = queue - queue_limit
            queue = queue_limit
            # Drop-tail overflow hits the flows that sent in this tick in proportion to what they sent
            # (those bytes must be sent again); each halves its window at most once per RTT, as a TCP
            # sender does per loss window.
            for flow in flows:
                if flow.sent <= 0:
                    continue
                flow.remaining += dropped * flow.sent / arrived
                if now - flow.last_loss_ms >= rtt:
                    flow.ssthresh = flow.cwnd = max(flow.cwnd / 2.0, 2.0 * MSS_BYTES)
                    flow.last_loss_ms = now
        flows = [f for f in flows if f.remaining > 0.5]
        interval_arrived += arrived
        interval_dropped += dropped
        interval_served += served
        # FIFO fluid: what leaves the queue carries the visible flows' share of what entered it.
        interval_visible_served += served * (visible_arrived / arrived) if arrived > 0 else 0.0

        if now + 1e-9 >= next_sample:
            active = sum(f.remaining for f in flows if f.announced)
            samples.append(PathTelemetry(
                path_id=cfg.path_id,
                time_ms=round(now, 6),
                queue_delay_ms=queue / capacity,
                loss_rate=interval_dropped / interval_arrived if interval_arrived > 0 else 0.0,
                utilisation=min(1.0, interval_visible_served / (capacity * sim.sample_ms)),
                capacity_bps=cfg.capacity_bps,
                announced_pending_bytes=pending_bytes,
                announced_active_bytes=int(active),
            ))
            interval_arrived = interval_dropped = interval_served = interval_visible_served = 0.0
            next_sample += sim.sample_ms
    return samples, bulk, len(background_times)


def generate(config: SyntheticConfig, seed: int) -> SyntheticTrace:
    """Simulate every path with its own child generator, then interleave samples by time."""
    children = np.random.SeedSequence(seed).spawn(len(config.paths))
    all_samples: list[PathTelemetry] = []
    all_bulk: list[BulkTransfer] = []
    background = 0
    for path, child in zip(config.paths, children, strict=True):
        samples, bulk, count = _simulate_path(path, config, np.random.default_rng(child))
        all_samples.extend(samples)
        all_bulk.extend(bulk)
        background += count
    all_samples.sort(key=lambda s: (s.time_ms, s.path_id))
    return SyntheticTrace(config, seed, tuple(all_samples), tuple(all_bulk), background)


def default_paths() -> tuple[PathConfig, ...]:
    """Three paths of different capacity, RTT and load, so the learner must generalise across them.

    Loads are set so that each path is congested roughly a quarter of the time, in episodes of
    a fraction of a second to a few seconds: congestion is the exception a mirror is for.
    """
    return (
        PathConfig(path_id="direct", capacity_bps=100e6, bulk_per_s=0.25),
        PathConfig(path_id="relay-a", capacity_bps=50e6, background_load=0.25, bulk_per_s=0.15),
        PathConfig(path_id="relay-b", capacity_bps=200e6, base_rtt_ms=20.0, queue_limit_ms=30.0,
                   background_load=0.3, bulk_per_s=0.3, bulk_min_bytes=5e6, bulk_max_bytes=40e6),
    )
