"""Lab-spec helpers shared by the demo and the recorder."""

from __future__ import annotations

from pathlib import Path

import pytest

from topomirror.lab.spec import load_lab
from topomirror.node.launch import LaunchError, overlay_address, with_host_settings

DIAMOND = Path(__file__).parents[3] / "examples" / "labs" / "diamond-mirror.yaml"


def test_host_settings_merge_over_the_nodes_own_and_spare_relays() -> None:
    base = load_lab(DIAMOND)
    spec = with_host_settings(base, "rec-x", adaptive={"policy": "off"}, timers={"feedback_ms": 50})
    assert spec.name == "rec-x"
    h3 = spec.nodes["h3"].topomirror or {}
    assert h3["adaptive"]["policy"] == "off"
    assert h3["adaptive"]["duplication_share"] == 0.5  # kept from the lab file
    assert h3["timers"] == {"feedback_ms": 50}
    assert "adaptive" not in (spec.nodes["x1"].topomirror or {})
    assert (base.nodes["h3"].topomirror or {})["adaptive"]["policy"] == "predictive", "the base is not changed"


def test_overlay_address() -> None:
    spec = load_lab(DIAMOND)
    assert overlay_address(spec, "h3") == "172.16.3.1"
    with pytest.raises(LaunchError, match="no topomirror overlay"):
        overlay_address(spec, "x1")
