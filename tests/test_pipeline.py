"""`bort run`: a killed run, rerun, redoes neither the search nor the finished part of pretraining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import run as pipeline


def _start(run_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--profile", "quick", "--run-dir", str(run_dir),
           "--set", "pretrain.checkpoint_every=2", "--set", "pretrain.max_steps=40",
           "--set", "pretrain.time_budget_s=600"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"bort run exited early with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError("timed out")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name.split("_")[1]) for p in (run_dir / "pretrain" / "checkpoints").glob("step_*")]
    return max(steps, default=0)


@pytest.mark.slow
@pytest.mark.integration
def test_interrupted_run_redoes_neither_search_nor_finished_pretraining(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    first = _start(run_dir, log)
    try:
        _wait_for(lambda: _checkpoint_step(run_dir) >= 4, first, timeout_s=900)
    finally:
        _kill(first)
    optimize_manifest = (run_dir / "optimize" / "manifest.json").read_text()
    killed_at = _checkpoint_step(run_dir)
    assert not (run_dir / "pretrain" / "manifest.json").exists()

    second = _start(run_dir, tmp_path / "second.log")
    try:
        _wait_for(lambda: (run_dir / "pretrain" / "manifest.json").exists(), second, timeout_s=900)
    finally:
        _kill(second)
    out = (tmp_path / "second.log").read_text()
    assert (run_dir / "optimize" / "manifest.json").read_text() == optimize_manifest  # search not redone
    assert "optimize  skipped (up to date)" in out
    assert f"resuming from checkpoint step {killed_at}" in out  # pretraining continued, not restarted
    metrics = json.loads((run_dir / "pretrain" / "manifest.json").read_text())["metrics"]
    assert metrics["steps"] == 40


def test_pipeline_order_is_the_product_order():
    assert [stage.name for stage in pipeline.PIPELINE] == ["optimize", "pretrain", "finetune", "export", "loadtest"]
