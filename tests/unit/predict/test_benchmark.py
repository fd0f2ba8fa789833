"""A short predictor evaluation: on synthetic data the model must beat the EWMA baselines on onset AUC.

Margins were chosen from seeds 1-10 of this exact setup (60 s, three default paths, H = 100 ms):
model minus ewma_delay was 0.17-0.30, model minus ewma_util 0.115-0.19, model 0.85-0.92.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from topomirror.analysis.predict import PredictorStore
from topomirror.analysis.synthetic import PathConfig, SyntheticConfig, default_paths, generate
from topomirror.benchmarks.predictor import evaluate, format_table, future_labels, load_telemetry


@pytest.mark.parametrize("seed", [1, 4])
def test_model_beats_ewma_on_onset_auc(seed: int) -> None:
    trace = generate(SyntheticConfig(duration_s=60.0, paths=default_paths()), seed)
    result = evaluate(trace.samples, horizons_ms=(100.0,), seed=seed, challenger=False, ablation=False)
    methods = result["horizons"]["100"]["methods"]
    model = methods["model"]["onset_auc"]
    assert model >= 0.80
    assert model >= methods["ewma_delay"]["onset_auc"] + 0.10
    assert model >= methods["ewma_util"]["onset_auc"] + 0.05
    assert methods["persistence"]["onset_auc"] == 0.5  # by definition: nobody is congested now
    assert "model" in format_table({"synthetic": result})


def test_future_labels_match_the_definition() -> None:
    paths = np.array(["a"] * 6 + ["b"] * 6)
    times = np.array([0, 10, 20, 30, 40, 50] * 2, dtype=float)
    delays = np.array([0, 0, 0, 5, 0, 0] + [5, 0, 0, 0, 0, 0], dtype=float)
    labels, complete = future_labels(paths, times, delays, horizon_ms=20.0)
    assert labels.tolist() == [False, True, True, False, False, False] + [False] * 6
    assert complete.tolist() == [True, True, True, True, False, False] * 2


def test_recorded_telemetry_from_the_store_is_evaluated(tmp_path: Path) -> None:
    # Recorded lab telemetry may lack capacity and utilisation: the evaluation must still run.
    trace = generate(SyntheticConfig(duration_s=20.0, paths=(PathConfig(path_id="lab", bulk_per_s=1.0),)), seed=2)
    recorded = [replace(s, utilisation=None, capacity_bps=None) for s in trace.samples]
    db = tmp_path / "telemetry.sqlite"
    with PredictorStore(db) as store:
        store.add_telemetry(recorded)
    loaded = load_telemetry(db)
    assert loaded == recorded
    result = evaluate(loaded, horizons_ms=(100.0, 200.0), challenger=False, ablation=True)
    assert result["samples"] == len(recorded) and result["paths"] == ["lab"]
    for horizon in ("100", "200"):
        methods = result["horizons"][horizon]["methods"]
        assert set(methods) == {"model", "persistence", "ewma_delay", "ewma_util", "gated", "model_no_metadata"}
        assert 0.0 <= methods["model"]["auc"] <= 1.0
