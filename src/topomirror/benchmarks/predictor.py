"""Congestion-predictor benchmark (`topomirror bench predictor`): methods side by side on one trace.

For each horizon H and method it reports, over samples after a warm-up:
- `auc`: ROC AUC on every sample;
- `onset_auc`: ROC AUC on samples whose path is not congested now (the only ones where a forecast
  can buy time), `tpr_at_5fpr`: true-positive rate on those at a 5 % false-positive rate;
- `lead_ms_median`: for each congestion onset that the method predicted (score above its 5 %-FPR
  threshold somewhere in the H before the onset), ms from the first such prediction to the onset;
  it is looked for only within the label window, so it is at most H (a forecast earlier than H is
  a false alarm for the label). `onsets_predicted` is the fraction of onsets with such a prediction.
Every learned method is scored prequentially: a sample's score is computed before its label exists,
and learning uses labels only once they have matured (t + H).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from topomirror.analysis.features import FeatureConfig, FeatureExtractor, PathTelemetry
from topomirror.analysis.predict import (
    CongestionPredictor,
    OfflineChallenger,
    OnlineLogistic,
    PredictorConfig,
    PredictorStore,
    challenger_backend,
    roc_auc,
    threshold_at_fpr,
    tpr_at_fpr,
)
from topomirror.analysis.synthetic import SyntheticConfig, default_paths, generate

HORIZONS_MS: tuple[float, ...] = (100.0, 200.0, 500.0)
METHODS: tuple[str, ...] = ("model", "challenger", "gated", "persistence", "ewma_delay", "ewma_util")
THRESHOLD_MS = 2.0
RECORDED_THRESHOLD_MS = 5.0


def future_labels(path_ids: np.ndarray, times: np.ndarray, delays: np.ndarray, horizon_ms: float,
                  threshold_ms: float = THRESHOLD_MS) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for every sample: congested in (t, t + H]; and whether that window is complete."""
    labels = np.zeros(times.size, dtype=bool)
    complete = np.zeros(times.size, dtype=bool)
    for path in np.unique(path_ids):
        index = np.flatnonzero(path_ids == path)
        t = times[index]
        congested_times = t[delays[index] > threshold_ms]
        # First congested time strictly after t; positive if it is within the horizon.
        position = np.searchsorted(congested_times, t, side="right")
        next_congested = np.full(t.size, np.inf)
        found = position < congested_times.size
        next_congested[found] = congested_times[position[found]]
        labels[index] = next_congested <= t + horizon_ms
        complete[index] = t + horizon_ms <= t[-1]
    return labels, complete


def onset_windows(path_ids: np.ndarray, times: np.ndarray, onset_points: np.ndarray, uncongested: np.ndarray,
                  horizon_ms: float) -> list[np.ndarray]:
    """For each onset, the uncongested samples of its path in the horizon before it (time order)."""
    windows: list[np.ndarray] = []
    by_path = {path: np.flatnonzero(path_ids == path) for path in np.unique(path_ids[onset_points])}
    for point in onset_points:
        index = by_path[path_ids[point]]
        path_times = times[index]
        low = np.searchsorted(path_times, times[point] - horizon_ms, side="left")
        high = np.searchsorted(path_times, times[point], side="left")
        window = index[low:high]
        windows.append(window[uncongested[window]])
    return windows


def _metrics(scores: np.ndarray, labels: np.ndarray, uncongested: np.ndarray, evaluated: np.ndarray,
             times: np.ndarray, onset_points: np.ndarray, windows: list[np.ndarray]) -> dict[str, Any]:
    y_all, s_all = labels[evaluated], scores[evaluated]
    mask = evaluated & uncongested
    y_onset, s_onset = labels[mask], scores[mask]
    threshold = threshold_at_fpr(y_onset, s_onset, 0.05)
    leads: list[float] = []
    for point, window in zip(onset_points, windows, strict=True):
        hits = window[scores[window] >= threshold]
        if hits.size:
            leads.append(float(times[point] - times[hits[0]]))
    return {
        "auc": _round(roc_auc(y_all, s_all)),
        "onset_auc": _round(roc_auc(y_onset, s_onset)),
        "tpr_at_5fpr": _round(tpr_at_fpr(y_onset, s_onset, 0.05)),
        "tpr_at_5fpr_all": _round(tpr_at_fpr(y_all, s_all, 0.05)),
        "lead_ms_median": _round(statistics.median(leads)) if leads else None,
        "onsets_predicted": _round(len(leads) / onset_points.size) if onset_points.size else None,
    }


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 3)


def _challenger_scores(rows: np.ndarray, labels: np.ndarray, times: np.ndarray,
                       horizon_ms: float, feature_names: Sequence[str], retrain_every_ms: float,
                       seed: int) -> tuple[np.ndarray, int]:
    """Batch-prequential: at each retrain time T, train on samples labelled by T, score [T, T + period).

    Scoring a whole period at once is what makes the trees affordable here (one-row LightGBM calls
    cost ~100 us); the result is the same as scoring each sample with the model of its period.
    The training set is the last six periods of stored samples, as the node's store would keep.
    """
    challenger = OfflineChallenger(feature_names, retrain_every=10**12, seed=seed)
    scores = np.full(times.size, 0.5)
    start = float(times.min())
    checkpoint = start + retrain_every_ms
    end = float(times.max())
    while checkpoint <= end:
        known = times + horizon_ms <= checkpoint  # labels matured by the checkpoint
        known &= times > checkpoint - retrain_every_ms * 6  # a sliding window of stored samples
        challenger.fit(rows[known], labels[known])
        upcoming = (times >= checkpoint) & (times < checkpoint + retrain_every_ms)
        if challenger.trained and upcoming.any():
            scores[upcoming] = challenger.score_rows(rows[upcoming])
        checkpoint += retrain_every_ms
    return scores, challenger.trainings


def evaluate(samples: Sequence[PathTelemetry], horizons_ms: Sequence[float] = HORIZONS_MS, seed: int = 1,
             warmup_ms: float | None = None, challenger: bool = True, ablation: bool = True,
             challenger_every_ms: float = 30_000.0, threshold_ms: float = THRESHOLD_MS) -> dict[str, Any]:
    """Run every method over time-ordered samples; return metrics per horizon and method."""
    samples = sorted(samples, key=lambda s: (s.time_ms, s.path_id))
    path_ids = np.array([s.path_id for s in samples])
    times = np.array([s.time_ms for s in samples], dtype=float)
    delays = np.array([s.queue_delay_ms for s in samples], dtype=float)
    congested = delays > threshold_ms
    onset = ~congested
    span = float(times.max() - times.min())
    if warmup_ms is None:
        warmup_ms = min(60_000.0, 0.2 * span)
    previous_congested = np.zeros(times.size, dtype=bool)
    last_state: dict[str, bool] = {}
    for i, path in enumerate(path_ids):
        previous_congested[i] = last_state.get(path, True)  # no onset at a path's first sample
        last_state[path] = bool(congested[i])
    result: dict[str, Any] = {"samples": int(times.size), "paths": sorted(last_state),
                              "duration_s": round(span / 1000.0, 1), "warmup_s": round(warmup_ms / 1000.0, 1),
                              "congested_fraction": _round(congested.mean()), "horizons": {}}
    for horizon in horizons_ms:
        labels, complete = future_labels(path_ids, times, delays, horizon, threshold_ms)
        evaluated = complete & (times >= times.min() + warmup_ms)
        onset_points = np.flatnonzero(congested & ~previous_congested & evaluated)
        config = PredictorConfig(horizon_ms=horizon, threshold_ms=threshold_ms, seed=seed)
        scores, gated_methods = _run_predictor(samples, config)
        if ablation:
            scores["model_no_metadata"] = _run_predictor(samples, replace(config, include_metadata=False))[0]["model"]
        if challenger:
            extractor = FeatureExtractor(FeatureConfig(horizon_ms=horizon, threshold_ms=threshold_ms))
            names = extractor.names
            rows = np.array([[f[n] for n in names] for f in (extractor.update(s) for s in samples)])
            scores["challenger"], trainings = _challenger_scores(rows, labels, times, horizon, names,
                                                                 challenger_every_ms, seed)
        windows = onset_windows(path_ids, times, onset_points, onset, horizon)
        per_method = {method: _metrics(values, labels, onset, evaluated, times, onset_points, windows)
                      for method, values in scores.items()}
        active = gated_methods[evaluated]
        per_method["gated"]["served_by"] = {str(m): _round(float(np.mean(active == m))) for m in np.unique(active)}
        result["horizons"][str(int(horizon))] = {
            "positive_fraction": _round(labels[evaluated].mean()),
            "onset_positive_fraction": _round(labels[evaluated & onset].mean()),
            "onsets": int(onset_points.size),
            "methods": per_method,
            **({"challenger_trainings": trainings} if challenger else {}),
        }
    return result


def _run_predictor(samples: Sequence[PathTelemetry], config: PredictorConfig
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores of every online method per sample, the gated probability, and which method the gate served."""
    predictor = CongestionPredictor(config)
    names = ("model", "persistence", "ewma_delay", "ewma_util")
    columns: dict[str, list[float]] = {name: [] for name in names}
    gated: list[float] = []
    methods: list[str] = []
    for sample in samples:
        forecast = predictor.observe(sample)
        for name in names:
            columns[name].append(forecast.scores[name])
        gated.append(forecast.probability)
        methods.append(forecast.method)
    out = {name: np.asarray(values) for name, values in columns.items()}
    # What decide() would see: the served method's probability (baselines calibrated online).
    out["gated"] = np.asarray(gated)
    return out, np.asarray(methods)


def measure_cost(samples: Sequence[PathTelemetry], count: int = 5000, seed: int = 1) -> dict[str, float]:
    """p50/p99 of one predict and one learn of the online model on realistic features: wall time,
    and this thread's CPU time (what the code costs when other processes load the machine)."""
    extractor = FeatureExtractor(FeatureConfig())
    features = [extractor.update(s) for s in samples[: count]]
    rng = np.random.default_rng(seed)
    model = OnlineLogistic()
    for f in features[:500]:
        model.learn(f, bool(f["congested_now"]))
    predict_us: list[float] = []
    learn_us: list[float] = []
    predict_cpu: list[float] = []
    learn_cpu: list[float] = []
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for f in features:
        start, start_cpu = wall(), cpu()
        model.score(f)
        predict_us.append((wall() - start) / 1000)
        predict_cpu.append((cpu() - start_cpu) / 1000)
        label = bool(rng.random() < 0.3)
        start, start_cpu = wall(), cpu()
        model.learn(f, label)
        learn_us.append((wall() - start) / 1000)
        learn_cpu.append((cpu() - start_cpu) / 1000)
    full = CongestionPredictor(PredictorConfig())
    observe_us: list[float] = []
    for s in samples[: count]:
        start = wall()
        full.observe(s)
        observe_us.append((wall() - start) / 1000)

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1)

    return {
        "predict_us_p50": pct(predict_us, 50), "predict_us_p99": pct(predict_us, 99),
        "learn_us_p50": pct(learn_us, 50), "learn_us_p99": pct(learn_us, 99),
        "predict_cpu_us_p99": pct(predict_cpu, 99), "learn_cpu_us_p99": pct(learn_cpu, 99),
        "observe_us_p50": pct(observe_us, 50), "observe_us_p99": pct(observe_us, 99),
    }


def load_telemetry(telemetry: Sequence[PathTelemetry] | str | Path) -> list[PathTelemetry]:
    if isinstance(telemetry, str | Path):
        with PredictorStore(telemetry) as store:
            return store.telemetry()
    return list(telemetry)


def run(quick: bool = False, seed: int = 1, telemetry: Sequence[PathTelemetry] | str | Path | None = None
        ) -> dict[str, Any]:
    started = time.perf_counter()
    config = SyntheticConfig(duration_s=60.0 if quick else 600.0, paths=default_paths())
    trace = generate(config, seed)
    result: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "threshold_ms": THRESHOLD_MS,
        "versions": _versions(),
        "synthetic_config": asdict(config),
        "synthetic": evaluate(trace.samples, seed=seed, challenger_every_ms=30_000.0 if quick else 60_000.0),
        "cost": measure_cost(trace.samples, count=3000 if quick else 10_000, seed=seed),
    }
    if telemetry is not None:
        # The lab's congestion threshold is 5 ms: its Python nodes add 1-3 ms of jitter of their own.
        result["recorded"] = evaluate(load_telemetry(telemetry), seed=seed, threshold_ms=RECORDED_THRESHOLD_MS)
        result["recorded"]["threshold_ms"] = RECORDED_THRESHOLD_MS
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def _versions() -> dict[str, str]:
    import river

    versions = {"river": river.__version__, "numpy": np.__version__, "challenger": challenger_backend()}
    if versions["challenger"] == "lightgbm":
        import lightgbm

        versions["lightgbm"] = lightgbm.__version__
    return versions


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of the synthetic (and recorded) results."""
    lines: list[str] = []
    for source in ("synthetic", "recorded"):
        if source not in result:
            continue
        block = result[source]
        lines.append(f"{source}: {block['samples']} samples, {block['duration_s']} s, "
                     f"paths {', '.join(block['paths'])}, congested {block['congested_fraction']}")
        lines.append(f"{'H ms':>5} {'method':<18} {'auc':>6} {'onset':>6} {'tpr@5':>6} {'lead':>6} {'pred%':>6}")
        for horizon, entry in block["horizons"].items():
            for method, m in entry["methods"].items():
                lines.append(f"{horizon:>5} {method:<18} {_fmt(m['auc'])} {_fmt(m['onset_auc'])} "
                             f"{_fmt(m['tpr_at_5fpr'])} {_fmt(m['lead_ms_median'])} {_fmt(m['onsets_predicted'])}")
            served = entry["methods"]["gated"]["served_by"]
            lines.append(f"{horizon:>5} onsets {entry['onsets']}, gated served by {served}")
    if "cost" in result:
        lines.append("cost (us): " + ", ".join(f"{k} {v}" for k, v in result["cost"].items()))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'-':>6}" if value is None else f"{value:>6.3g}" if abs(value) < 10 else f"{value:>6.0f}"


def main(argv: Sequence[str]) -> None:
    """`python -m topomirror.benchmarks.predictor [--quick] [--seed N] [--json OUT] [--telemetry DB]`."""
    args = list(argv)

    def option(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None

    seed = option("--seed")
    outcome = run(quick="--quick" in args, seed=int(seed) if seed else 1, telemetry=option("--telemetry"))
    print(format_table(outcome))
    out = option("--json")
    if out:
        Path(out).write_text(json.dumps(outcome, indent=1, default=str) + "\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
