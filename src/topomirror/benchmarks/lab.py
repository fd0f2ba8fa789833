"""Deploy and destroy time of larger labs (`topomirror bench lab`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from topomirror.lab.realize import deploy, destroy
from topomirror.lab.spec import load_lab

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "labs"
DEFAULT_LABS = ("fat-tree-k4.yaml", "ring-32.yaml")


def run(files: list[Path] | None = None, repeats: int = 3,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    results: dict[str, object] = {}
    for file in files or [EXAMPLES / name for name in DEFAULT_LABS]:
        spec = load_lab(file)
        spec = spec.model_copy(update={"name": f"bn-{spec.name}"[:20]})
        deploys, destroys = [], []
        for attempt in range(repeats):
            progress(f"{file.name}: run {attempt + 1}/{repeats}")
            start = time.perf_counter()
            deploy(spec, str(file), force=True)
            deploys.append(time.perf_counter() - start)
            start = time.perf_counter()
            destroy(spec)
            destroys.append(time.perf_counter() - start)
        results[file.stem] = {
            "nodes": len(spec.nodes),
            "links": len(spec.links),
            "deploy_s_median": round(statistics.median(deploys), 3),
            "deploy_s_max": round(max(deploys), 3),
            "destroy_s_median": round(statistics.median(destroys), 3),
            "destroy_s_max": round(max(destroys), 3),
        }
    return results
