"""Congestion prediction: will a path's queueing delay exceed a threshold within the next H?

Label for a sample at time t on path p: some sample of p in (t, t + H] has a queueing delay above
`threshold_ms` (2 ms above the path's base by default). Labels are therefore only known at t + H:
the `DelayedLabeler` holds each sample's features until then, and only then hands (features,
label) to the learners. Nothing here reads a clock or opens a socket; time comes from samples.

Methods, all scored on the same features (analysis.features):
- `model`: online logistic regression (river), updated from delayed labels;
- `challenger`: gradient-boosted trees (LightGBM, else sklearn HistGradientBoosting) retrained
  periodically from a window of stored labelled samples;
- baselines `persistence` (congested now), `ewma_delay`, `ewma_util`, whose scores are turned
  into probabilities by an online Platt calibration so that the gate can swap them in;
- a `Gate` that serves the best learned method unless its rolling AUC falls below the best
  baseline's, in which case the forecast comes from that baseline (and says so).
"""

from __future__ import annotations

import bisect
import math
import pickle
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from topomirror.analysis.features import FeatureConfig, FeatureExtractor, PathTelemetry

Features = Mapping[str, float]

BASELINES: tuple[str, ...] = ("persistence", "ewma_delay", "ewma_util")


@dataclass(frozen=True, slots=True)
class PathForecast:
    """What the decision needs: how likely the path congests within the horizon, and who said so."""

    path_id: str
    time_ms: float
    horizon_ms: float
    probability: float
    method: str
    # Every method's score at this step (probabilities for `model`/`challenger`, raw for baselines);
    # kept for explanations and for evaluation.
    scores: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Metrics (numpy only, shared by the gate and the benchmark)


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks); NaN if one class."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=float)
    # Average rank over each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    run_ranks = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def threshold_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Smallest score threshold (predict positive when score >= it) whose FPR is at most `fpr`."""
    negatives = np.sort(np.asarray(scores, dtype=float)[~np.asarray(labels, dtype=bool)])
    if negatives.size == 0:
        return -math.inf
    allowed = int(math.floor(fpr * negatives.size))  # negatives allowed at or above the threshold
    if allowed >= negatives.size:
        return -math.inf
    # Strictly above the (allowed+1)-th largest negative keeps at most `allowed` false positives.
    return float(np.nextafter(negatives[negatives.size - allowed - 1], math.inf))


def tpr_at_fpr(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, fpr: float = 0.05) -> float:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.sum() == 0 or (~y).sum() == 0:
        return math.nan
    threshold = threshold_at_fpr(y, s, fpr)
    return float((s[y] >= threshold).mean())


# ---------------------------------------------------------------------------------------------
# Delayed labels


class DelayedLabeler:
    """Holds one path's samples until their label is known, i.e. until time t + H has been seen.

    The learner gets (payload, label) for a sample at t only from a push at time >= t + H, so it
    can never learn from the future of a sample it is still predicting.
    """

    def __init__(self, horizon_ms: float, threshold_ms: float) -> None:
        self.horizon_ms = horizon_ms
        self.threshold_ms = threshold_ms
        self._pending: deque[tuple[float, Any]] = deque()
        self._congested_times: list[float] = []

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, time_ms: float, queue_delay_ms: float, payload: Any) -> list[tuple[Any, bool, float]]:
        """Record a sample; return (payload, label, sample time) of every sample whose label matured."""
        if queue_delay_ms > self.threshold_ms:
            self._congested_times.append(time_ms)
        matured: list[tuple[Any, bool, float]] = []
        while self._pending and self._pending[0][0] + self.horizon_ms <= time_ms:
            sample_time, sample_payload = self._pending.popleft()
            # Congested anywhere in (t, t + H]?
            first_after = bisect.bisect_right(self._congested_times, sample_time)
            label = (first_after < len(self._congested_times)
                     and self._congested_times[first_after] <= sample_time + self.horizon_ms)
            matured.append((sample_payload, label, sample_time))
        self._pending.append((time_ms, payload))
        # Congestion times at or before the oldest pending sample can no longer matter.
        oldest = self._pending[0][0]
        drop = bisect.bisect_right(self._congested_times, oldest)
        if drop:
            del self._congested_times[:drop]
        return matured


# ---------------------------------------------------------------------------------------------
# Scorers


class Scorer(Protocol):
    name: str

    def score(self, features: Features) -> float: ...

    def learn(self, features: Features, label: bool) -> None: ...


class RunningScaler:
    """Standardises each feature with a running (Welford) mean and variance.

    Same arithmetic as river's StandardScaler at less than half its cost per sample (~7 us vs
    ~16 us), which is what keeps a learn step inside its budget. A feature that has not varied
    yet (or never will: utilisation on a path whose capacity is unknown) is left out of the
    output rather than mapped to 0: to a linear model without L2 a missing feature and a 0 are
    the same, and every feature left out is a weight the learner need not touch.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, float] = {}
        self.m2: dict[str, float] = {}
        # 1 / std, refreshed on learn so that transform (called more often) is a plain multiply.
        self.inverse_std: dict[str, float] = {}

    def learn(self, features: Features) -> None:
        self.learn_transform(features)

    def learn_transform(self, features: Features) -> dict[str, float]:
        """Learn one sample and return it standardised with the updated statistics (one pass)."""
        self.count += 1
        count, mean, m2, inverse_std = self.count, self.mean, self.m2, self.inverse_std
        scaled: dict[str, float] = {}
        for name, value in features.items():
            old_mean = mean.get(name, 0.0)
            delta = value - old_mean
            new_mean = old_mean + delta / count
            mean[name] = new_mean
            spread = m2.get(name, 0.0) + delta * (value - new_mean)
            m2[name] = spread
            if spread > 0:
                scale = inverse_std[name] = (count / spread) ** 0.5
                scaled[name] = (value - new_mean) * scale
            else:
                inverse_std[name] = 0.0
        return scaled

    def transform(self, features: Features) -> dict[str, float]:
        mean, inverse_std = self.mean, self.inverse_std
        # Unseen and constant features are left out (see the class docstring).
        return {name: (value - mean[name]) * scale for name, value in features.items()
                if (scale := inverse_std.get(name, 0.0))}


class OnlineLogistic:
    """Online logistic regression (river) on standardised features, learning one sample at a time.

    Why logistic regression: a dozen well-shaped features, labels that arrive one by one, and a
    budget of tens of microseconds per step. Its weights are readable (which signal drove a
    forecast) and it follows drift without retraining. AdaGrad rather than plain SGD: per-feature
    step sizes suit features that are rarely non-zero (announced bytes), and on the synthetic
    benchmark it was steadier across horizons (H = 500 ms onset AUC +0.03 over SGD 0.005).
    """

    name = "model"

    def __init__(self, learning_rate: float = 0.02) -> None:
        from river import linear_model, optim

        self.scaler = RunningScaler()
        self.regression = linear_model.LogisticRegression(optimizer=optim.AdaGrad(learning_rate))

    def score(self, features: Features) -> float:
        return float(self.regression.predict_proba_one(self.scaler.transform(features)).get(True, 0.0))

    def learn(self, features: Features, label: bool) -> None:
        self.regression.learn_one(self.scaler.learn_transform(features), bool(label))

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.regression.weights)


class _PlattCalibration:
    """Online sigmoid(a * z + b) on a standardised score: turns a baseline score into a probability."""

    def __init__(self, learning_rate: float = 0.02) -> None:
        self.learning_rate = learning_rate
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.a = 1.0
        self.b = 0.0

    def _z(self, score: float) -> float:
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
        return (score - self.mean) / (std or 1.0)

    def probability(self, score: float) -> float:
        x = self.a * self._z(score) + self.b
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, x))))

    def learn(self, score: float, label: bool) -> None:
        self.count += 1
        delta = score - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (score - self.mean)
        z = self._z(score)
        error = self.probability(score) - (1.0 if label else 0.0)
        self.a -= self.learning_rate * error * z
        self.b -= self.learning_rate * error


class Baseline:
    """A score read straight from one feature, with an online calibration for its probability."""

    def __init__(self, name: str, feature: str) -> None:
        self.name = name
        self.feature = feature
        self.calibration = _PlattCalibration()

    def score(self, features: Features) -> float:
        return float(features[self.feature])

    def probability(self, score: float) -> float:
        return self.calibration.probability(score)

    def learn(self, features: Features, label: bool) -> None:
        self.calibration.learn(self.score(features), label)


def make_baselines() -> dict[str, Baseline]:
    return {
        "persistence": Baseline("persistence", "congested_now"),
        "ewma_delay": Baseline("ewma_delay", "delay_ewma_fast"),
        "ewma_util": Baseline("ewma_util", "utilisation_ewma"),
    }


class OfflineChallenger:
    """Gradient-boosted trees retrained every `retrain_every` labels on the last `window` labels."""

    name = "challenger"

    def __init__(self, feature_names: Sequence[str], retrain_every: int = 20_000, window: int = 60_000,
                 min_samples: int = 2_000, seed: int = 1) -> None:
        self.feature_names = tuple(feature_names)
        self.retrain_every = retrain_every
        self.min_samples = min_samples
        self.seed = seed
        self._rows: deque[tuple[float, ...]] = deque(maxlen=window)
        self._labels: deque[bool] = deque(maxlen=window)
        self._since_train = 0
        self._model: Any = None
        self.trainings = 0
        self.backend = challenger_backend()

    @property
    def trained(self) -> bool:
        return self._model is not None

    def row(self, features: Features) -> tuple[float, ...]:
        # A tuple of floats: the collector stops tracking it, so 60,000 of them cost no GC time.
        return tuple(float(features.get(name, 0.0)) for name in self.feature_names)

    def learn(self, features: Features, label: bool) -> None:
        self.add_row(self.row(features), label)

    def add_row(self, row: tuple[float, ...], label: bool) -> None:
        self._rows.append(row)
        self._labels.append(bool(label))
        self._since_train += 1
        if self._since_train >= self.retrain_every or (not self.trained and len(self._rows) >= self.min_samples):
            self.retrain()

    def retrain(self) -> bool:
        labels = np.fromiter(self._labels, dtype=bool, count=len(self._labels))
        self._since_train = 0
        return self.fit(np.asarray(self._rows, dtype=float), labels)

    def fit(self, rows: np.ndarray, labels: np.ndarray) -> bool:
        """Train on the given rows (e.g. loaded from the store); False if they cannot train a model."""
        if labels.size < self.min_samples or labels.all() or not labels.any():
            return False
        self._model = _fit_trees(rows, labels, self.seed)
        self.trainings += 1
        return True

    def score(self, features: Features) -> float:
        if self._model is None:
            return 0.5
        return float(self.score_rows(np.asarray([self.row(features)]))[0])

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        if self._model is None:
            return np.full(len(rows), 0.5)
        return np.asarray(self._model.predict_proba(rows)[:, 1], dtype=float)


def challenger_backend() -> str:
    try:
        import lightgbm  # noqa: F401
    except (ImportError, OSError):  # OSError: the wheel is there but libgomp is not
        return "sklearn-hist-gradient-boosting"
    return "lightgbm"


def _fit_trees(rows: np.ndarray, labels: np.ndarray, seed: int) -> Any:
    if challenger_backend() == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(n_estimators=100, num_leaves=15, learning_rate=0.1, min_child_samples=50,
                                       subsample=0.8, subsample_freq=1, random_state=seed, n_jobs=2,
                                       verbose=-1).fit(rows, labels)
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15, random_state=seed).fit(rows, labels)


# ---------------------------------------------------------------------------------------------
# Gate


@dataclass(frozen=True, slots=True)
class GateConfig:
    # Labelled samples the rolling AUC looks back over. Onsets are rare (a few % of samples), so
    # a short window makes the AUC noisy and the gate flap; 20000 is about a minute of 3 paths.
    window: int = 20_000
    every: int = 1000  # re-evaluate after this many new labels (AUC is O(n log n))
    min_labels: int = 5000  # before this, serve the starting baseline
    margin: float = 0.0  # the learned method must beat the best baseline by this much
    hysteresis: float = 0.01  # a challenger must beat the active method by this much to take over
    initial: str = "ewma_delay"
    # Score only samples where the path is not congested now: onset is where prediction matters
    # (when congested now, every method agrees). Falls back to all samples if too few.
    onset_only: bool = True


class Gate:
    """Chooses which method's forecast is served, from rolling AUCs on delayed labels."""

    def __init__(self, learned: Sequence[str], baselines: Sequence[str] = BASELINES,
                 config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.learned = tuple(learned)
        self.baselines = tuple(baselines)
        self.active = self.config.initial
        self.rolling_auc: dict[str, float] = {}
        self._labels: deque[bool] = deque(maxlen=self.config.window)
        self._onset: deque[bool] = deque(maxlen=self.config.window)
        self._scores: dict[str, deque[float]] = {m: deque(maxlen=self.config.window)
                                                 for m in self.learned + self.baselines}
        self._since_evaluation = 0
        self.switches = 0

    def record(self, scores: Mapping[str, float], label: bool, congested_now: bool) -> None:
        self._labels.append(bool(label))
        self._onset.append(not congested_now)
        for method, history in self._scores.items():
            history.append(float(scores.get(method, 0.5)))
        self._since_evaluation += 1
        if self._since_evaluation >= self.config.every:
            self._since_evaluation = 0
            self.evaluate()

    def evaluate(self) -> str:
        labels = np.fromiter(self._labels, dtype=bool, count=len(self._labels))
        if labels.size < self.config.min_labels:
            return self.active
        mask = np.fromiter(self._onset, dtype=bool, count=len(self._onset))
        if not self.config.onset_only or mask.sum() < self.config.min_labels // 4 or labels[mask].all() \
                or not labels[mask].any():
            mask = np.ones_like(labels)
        self.rolling_auc = {}
        for method, history in self._scores.items():
            auc = roc_auc(labels[mask], np.fromiter(history, dtype=float, count=len(history))[mask])
            if not math.isnan(auc):
                self.rolling_auc[method] = auc
        learned = {m: a for m, a in self.rolling_auc.items() if m in self.learned}
        baselines = {m: a for m, a in self.rolling_auc.items() if m in self.baselines}
        if not baselines and not learned:
            return self.active
        best_learned = max(learned, key=lambda m: learned[m]) if learned else None
        best_baseline = max(baselines, key=lambda m: baselines[m]) if baselines else None
        if best_learned is not None and (best_baseline is None
                                         or learned[best_learned] >= baselines[best_baseline] + self.config.margin):
            chosen = best_learned
        else:
            chosen = best_baseline or self.active
        current = self.rolling_auc.get(self.active)
        if current is not None and self.rolling_auc[chosen] < current + self.config.hysteresis:
            chosen = self.active  # not clearly better: stay, so the served method does not flap
        if chosen != self.active:
            self.switches += 1
            self.active = chosen
        return self.active


# ---------------------------------------------------------------------------------------------
# The predictor


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    horizon_ms: float = 100.0
    threshold_ms: float = 2.0
    include_metadata: bool = True
    learning_rate: float = 0.02
    gate: GateConfig = field(default_factory=GateConfig)
    use_challenger: bool = False  # per-sample tree scoring costs ~100 us; the node turns it on
    challenger_retrain_every: int = 20_000
    challenger_window: int = 60_000
    seed: int = 1


class CongestionPredictor:
    """One horizon, every path: features -> scores of all methods -> gated forecast; delayed learning."""

    def __init__(self, config: PredictorConfig | None = None, model: Scorer | None = None) -> None:
        self.config = config or PredictorConfig()
        self.features = FeatureExtractor(FeatureConfig(horizon_ms=self.config.horizon_ms,
                                                       threshold_ms=self.config.threshold_ms,
                                                       include_metadata=self.config.include_metadata))
        self.model: Scorer = model or OnlineLogistic(self.config.learning_rate)
        self.baselines = make_baselines()
        self.challenger = (OfflineChallenger(self.features.names, self.config.challenger_retrain_every,
                                             self.config.challenger_window, seed=self.config.seed)
                           if self.config.use_challenger else None)
        learned = (self.model.name,) + ((OfflineChallenger.name,) if self.challenger else ())
        self.gate = Gate(learned, tuple(self.baselines), self.config.gate)
        self._labelers: dict[str, DelayedLabeler] = {}
        self.labels_learned = 0

    def observe(self, sample: PathTelemetry) -> PathForecast:
        """Score the sample, serve the gated forecast, then learn every label that has matured."""
        features = self.features.update(sample)
        scores = {self.model.name: self.model.score(features)}
        if self.challenger is not None:
            scores[self.challenger.name] = self.challenger.score(features)
        for name, baseline in self.baselines.items():
            scores[name] = baseline.score(features)
        forecast = PathForecast(sample.path_id, sample.time_ms, self.config.horizon_ms,
                                self._probability(scores), self.gate.active, scores)

        labeler = self._labelers.get(sample.path_id)
        if labeler is None:
            labeler = self._labelers[sample.path_id] = DelayedLabeler(self.config.horizon_ms, self.config.threshold_ms)
        for (old_features, old_scores), label, _ in labeler.push(sample.time_ms, sample.queue_delay_ms,
                                                                           (features, scores)):
            self._learn(old_features, old_scores, label)
        return forecast

    def _probability(self, scores: Mapping[str, float]) -> float:
        active = self.gate.active
        if active in self.baselines:
            return self.baselines[active].probability(scores[active])
        return scores[active]

    def _learn(self, features: Features, scores: Mapping[str, float], label: bool) -> None:
        self.model.learn(features, label)
        for baseline in self.baselines.values():
            baseline.learn(features, label)
        if self.challenger is not None:
            self.challenger.learn(features, label)
        self.gate.record(scores, label, congested_now=features["congested_now"] > 0.5)
        self.labels_learned += 1


# ---------------------------------------------------------------------------------------------
# Persistence


class PredictorStore:
    """SQLite home for telemetry and model state, so a restarted node keeps what it learned.

    Model state is pickled: only ever load a database this node wrote itself (pickle runs code).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS telemetry (
        path_id TEXT NOT NULL, time_ms REAL NOT NULL, queue_delay_ms REAL NOT NULL, loss_rate REAL NOT NULL,
        utilisation REAL, capacity_bps REAL, announced_pending_bytes INTEGER NOT NULL,
        announced_active_bytes INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS telemetry_path_time ON telemetry (path_id, time_ms);
    CREATE TABLE IF NOT EXISTS models (
        name TEXT NOT NULL, horizon_ms REAL NOT NULL, saved_ms REAL NOT NULL, format TEXT NOT NULL,
        state BLOB NOT NULL, PRIMARY KEY (name, horizon_ms));
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(self.SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PredictorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_telemetry(self, samples: Iterable[PathTelemetry]) -> int:
        rows = [(s.path_id, s.time_ms, s.queue_delay_ms, s.loss_rate, s.utilisation, s.capacity_bps,
                 s.announced_pending_bytes, s.announced_active_bytes) for s in samples]
        with self._db:
            self._db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def telemetry(self, path_id: str | None = None, since_ms: float | None = None) -> list[PathTelemetry]:
        query = "SELECT * FROM telemetry WHERE 1 = 1"
        args: list[object] = []
        if path_id is not None:
            query += " AND path_id = ?"
            args.append(path_id)
        if since_ms is not None:
            query += " AND time_ms >= ?"
            args.append(since_ms)
        query += " ORDER BY time_ms, path_id"
        return [PathTelemetry(path_id=r[0], time_ms=r[1], queue_delay_ms=r[2], loss_rate=r[3], utilisation=r[4],
                              capacity_bps=r[5], announced_pending_bytes=r[6], announced_active_bytes=r[7])
                for r in self._db.execute(query, args)]

    def save_model(self, name: str, horizon_ms: float, state: object, saved_ms: float) -> None:
        blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, 'pickle', ?)",
                             (name, horizon_ms, saved_ms, blob))

    def load_model(self, name: str, horizon_ms: float) -> Any | None:
        row = self._db.execute("SELECT format, state FROM models WHERE name = ? AND horizon_ms = ?",
                               (name, horizon_ms)).fetchone()
        if row is None:
            return None
        if row[0] != "pickle":
            raise ValueError(f"model {name!r} (H={horizon_ms} ms) in {self.path} has unknown format {row[0]!r}")
        return pickle.loads(row[1])  # noqa: S301 - our own database, see class docstring

    def models(self) -> list[tuple[str, float, float]]:
        return [tuple(r) for r in self._db.execute("SELECT name, horizon_ms, saved_ms FROM models ORDER BY name")]
