"""Warm restart (`node run --replace PID`): which process it may stop, and how it stops it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from topomirror.lab.registry import process_start_time
from topomirror.node.replace import ReplaceError, daemon_config, replace

# A stand-in for a node daemon: its command line says `node run --config FILE`.
_FAKE = "import signal, sys, time; {handler}; print('up', flush=True); time.sleep(60)"


def _fake_daemon(config: Path, *, ignore_term: bool = False, cwd: Path | None = None) -> subprocess.Popen[str]:
    handler = ("signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term
               else "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))")
    proc = subprocess.Popen([sys.executable, "-c", _FAKE.format(handler=handler), "node", "run",
                             "--config", str(config), "--ready-file", "/nonexistent"],
                            stdout=subprocess.PIPE, text=True, cwd=cwd)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def test_the_config_is_read_off_a_node_run_command_line() -> None:
    line = b"/venv/bin/python\0-m\0topomirror.cli.main\0node\0run\0--config\0/x/config.yaml\0--ready-file\0/r\0"
    assert daemon_config(line) == Path("/x/config.yaml")
    assert daemon_config(b"topomirror\0node\0run\0--config=/y.yaml\0") == Path("/y.yaml")
    assert daemon_config(b"topomirror\0node\0run\0-c\0/z.yaml\0") == Path("/z.yaml")
    assert daemon_config(b"topomirror\0node\0check-config\0/x/config.yaml\0") is None
    assert daemon_config(b"sleep\0100\0") is None
    assert daemon_config(b"topomirror\0node\0run\0--config\0") is None


def test_replace_stops_the_daemon_of_the_same_config_and_waits_until_it_is_gone(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("name: h1\n")
    proc = _fake_daemon(config)
    took = replace(proc.pid, config)
    assert proc.wait(timeout=5) == 0  # it ran its SIGTERM handler: a clean shutdown
    assert 0.0 < took < 5.0
    assert replace(proc.pid, config) == 0.0  # gone: nothing to replace


def test_a_relative_config_is_read_from_where_that_daemon_was_started(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    config = tmp_path / "node" / "config.yaml"
    config.write_text("name: h1\n")
    proc = _fake_daemon(Path("config.yaml"), cwd=tmp_path / "node")  # `node run --config config.yaml`
    assert replace(proc.pid, config) > 0.0  # the same file, named from elsewhere
    assert proc.wait(timeout=5) == 0


def test_replace_refuses_a_process_that_is_not_the_daemon_of_this_config(tmp_path: Path) -> None:
    config, other = tmp_path / "config.yaml", tmp_path / "other.yaml"
    config.write_text("name: h1\n")
    other.write_text("name: h2\n")
    proc = _fake_daemon(other)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (proc.pid, sleeper.pid):
            start = process_start_time(pid)
            with pytest.raises(ReplaceError, match="not a topomirror node daemon running"):
                replace(pid, config)
            assert process_start_time(pid) == start  # untouched
    finally:
        for p in (proc, sleeper):
            p.kill()
            p.wait()


def test_replace_never_stops_the_process_it_runs_in(tmp_path: Path) -> None:
    import os

    with pytest.raises(ReplaceError, match="this daemon itself"):
        replace(os.getpid(), tmp_path / "config.yaml")


def test_a_daemon_that_hangs_in_shutdown_is_killed_after_the_timeout(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("name: h1\n")
    proc = _fake_daemon(config, ignore_term=True)
    began = time.monotonic()
    replace(proc.pid, config, timeout=0.3)
    assert proc.wait(timeout=5) == -9
    assert time.monotonic() - began >= 0.3


def test_node_run_refuses_to_replace_a_process_that_is_not_its_daemon_before_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from topomirror.cli.main import app
    from topomirror.lab.plan import compile_lab
    from topomirror.lab.registry import LabRegistry
    from topomirror.lab.spec import load_lab
    from topomirror.node.launch import generate_configs

    monkeypatch.setenv("TOPOMIRROR_RUN_DIR", str(tmp_path))
    lab = Path(__file__).parents[3] / "examples" / "labs" / "diamond-mirror.yaml"
    spec = load_lab(lab)
    registry = LabRegistry(lab=spec.name, file=str(lab), deployed_at=0.0)
    registry.folder.mkdir(parents=True)
    config = generate_configs(compile_lab(spec), registry)["h1"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        result = CliRunner().invoke(app, ["node", "run", "--config", str(config), "--replace", str(sleeper.pid)])
        assert result.exit_code == 2, result.output
        assert "not a topomirror node daemon" in result.output
        assert sleeper.poll() is None  # still running: never signalled
    finally:
        sleeper.kill()
        sleeper.wait()
