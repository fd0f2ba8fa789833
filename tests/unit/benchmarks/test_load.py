"""`bench load`: the widened lab (demo.runner's, shared with the demo's second reference) and the
per-pair ratios (pure; the runs are demo.runner's)."""

from __future__ import annotations

import pytest

from topomirror.benchmarks.load import ratios
from topomirror.demo.runner import EXAMPLES, widened
from topomirror.lab.plan import compile_lab
from topomirror.lab.spec import load_lab


def test_widened_raises_only_the_core_links_rate() -> None:
    spec = load_lab(EXAMPLES / "diamond-mirror.yaml")
    wide = widened(spec, "core", 10**9)
    for old, link in zip(spec.links, wide.links, strict=True):
        if link.name == "core":
            assert link.bw == 10**9 and link.queue == old.queue
            assert old.bw is not None and old.bw < 10**9
        else:
            assert link == old
    assert compile_lab(wide).links  # still a lab the planner takes
    with pytest.raises(ValueError, match="no link named 'spine'"):
        widened(spec, "spine")


def test_ratios_pair_each_load_with_its_reference_and_skip_missing() -> None:
    pairs = [({"rpc_p99_ms": 4.0}, {"rpc_p99_ms": 6.0}), ({"rpc_p99_ms": None}, {"rpc_p99_ms": 5.0}),
             ({"rpc_p99_ms": 5.0}, {"rpc_p99_ms": 5.0})]
    assert ratios(pairs, "rpc_p99_ms") == [1.5, 1.0]
    assert ratios(pairs, "rpc_p99_quiet_ms") == []
