"""Start and stop node daemons for lab nodes that carry a `topomirror:` block."""

from __future__ import annotations

from collections.abc import Callable

from topomirror.lab.spec import LabSpec


def start_lab_nodes(spec: LabSpec, file: str,
                    progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Start one node daemon per lab node with a `topomirror:` block; return their names."""
    return []
