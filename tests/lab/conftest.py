from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_lab_host
from topomirror.lab.plan import LabPlan, compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.spec import LabSpec, load_lab, parse_lab

EXAMPLES = Path(__file__).parents[2] / "examples" / "labs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


class Lab:
    def __init__(self, spec: LabSpec, file: str) -> None:
        self.spec, self.file = spec, file
        self.plan: LabPlan = compile_lab(spec)

    def exec(self, node: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.plan.namespace(node), *argv],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Deploy a lab (example file or inline YAML) under a test-only name; always destroy it."""
    require_lab_host()
    labs: list[Lab] = []

    def _make(source: str, name: str, tmp: Path | None = None) -> Lab:
        if source.endswith(".yaml") and "\n" not in source:
            spec = load_lab(EXAMPLES / source)
            file = str(EXAMPLES / source)
        else:
            spec = parse_lab(source, "<inline>")
            file = "<inline>"
        spec = spec.model_copy(update={"name": name})
        lab = Lab(spec, file)
        labs.append(lab)
        deploy(spec, file, force=True)
        return lab

    yield _make
    for lab in labs:
        destroy(lab.spec)
