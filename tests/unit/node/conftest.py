"""A Node built from a lab's generated config, without sockets or a TUN (for the daemon's pure parts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from topomirror.lab.plan import compile_lab
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import load_lab
from topomirror.node.config import load_config
from topomirror.node.daemon import Node
from topomirror.node.launch import generate_configs

DIAMOND = Path(__file__).parents[3] / "examples" / "labs" / "diamond-mirror.yaml"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setenv("TOPOMIRROR_RUN_DIR", str(tmp_path))
    spec = load_lab(DIAMOND)
    registry = LabRegistry(lab=spec.name, file=str(DIAMOND), deployed_at=0.0)
    registry.folder.mkdir(parents=True)
    configs = generate_configs(compile_lab(spec), registry)
    node = Node(load_config(configs["h1"]))
    yield node
    if node.store is not None:
        node.store.close()
