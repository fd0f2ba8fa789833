from __future__ import annotations

import os
import shutil

import pytest

LAB_TOOLS = ("ip", "nft", "iperf3", "ping", "ss")


def require_lab_host() -> None:
    """End-to-end tests need root and the lab tools: fail loudly, never skip."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end lab tests need root (network namespaces): run 'make test' as root")
    missing = [tool for tool in LAB_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"end-to-end lab tests need {', '.join(missing)}: run 'make setup' as root")


@pytest.fixture(autouse=True)
def _run_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep test registries apart from any lab a user has deployed by hand.
    monkeypatch.setenv("TOPOMIRROR_RUN_DIR", str(tmp_path_factory.getbasetemp() / "run"))
