"""The headline run: `topomirror demo --quick --json` on real namespaces, and its HTML report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_lab_host


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    require_lab_host()
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run([sys.executable, "-m", "topomirror.cli.main", "demo", "--quick", "--json", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout), out


def test_predictive_beats_off_on_p99_and_costs_less_than_always(demo) -> None:  # type: ignore[no-untyped-def]
    result, _ = demo
    policies = result["policies"]
    assert set(policies) == {"off", "always", "reactive", "predictive"}
    for summary in policies.values():
        assert {"rpc_p50_ms", "rpc_p99_ms", "rpc_p999_ms", "bulk_goodput_mbps", "extra_bytes_pct", "sessions",
                "lead_time_ms"} <= set(summary)
        assert summary["rpc_count"] > 1000
        assert 0.0 <= summary["cpu_steal_pct"] <= 100.0  # the machine's, read beside every run
    off, always, predictive = policies["off"], policies["always"], policies["predictive"]
    print(json.dumps(policies, indent=1))
    assert predictive["rpc_p99_ms"] < off["rpc_p99_ms"], "prediction must cut the RPC tail"
    assert predictive["extra_bytes_pct"] < always["extra_bytes_pct"] / 2, "and cost far fewer copies"
    assert off["extra_bytes_pct"] == 0 and off["sessions"] == 0
    assert predictive["sessions"] > 0


def test_report_renders_in_headless_chromium(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, out = demo
    report = out / "report.html"
    assert report.exists() and (out / "demo.json").exists()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("the report test needs Debian's chromium: run 'make setup' as root")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,2400",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    inked = (pixels.sum(axis=2) < 2.7).mean()  # not (near) white
    coloured = ((pixels.max(axis=2) - pixels.min(axis=2)) > 0.25).mean()  # plot lines and shading
    assert inked > 0.02, f"the page is nearly empty ({inked:.3%} inked)"
    assert coloured > 0.002, f"no coloured plot pixels ({coloured:.3%})"
