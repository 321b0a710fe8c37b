"""Pretraining killed part-way (a real process, SIGKILL) resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, staged

from bort import config as C
from bort.artifacts import read_manifest
from pretrain import stage as pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = ["pretrain.layers=1", "pretrain.heads=3", "pretrain.hidden=21", "pretrain.intermediate=20"]
BUDGET = ["pretrain.max_steps=30", "pretrain.checkpoint_every=3", "pretrain.eval_every=10",
          "pretrain.time_budget_s=0", "pretrain.heldout_texts=16", "pretrain.batch_size=8"]



def _overrides(source: Path) -> list[str]:
    return [f"source.model={source}", *SHAPE, *BUDGET]


def _loss_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "pretrain" / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def _kill_after_first_checkpoint(run_dir: Path, source: Path) -> int:
    cmd = [sys.executable, "-m", "pipeline.cli", "pretrain", "--profile", "tiny", "--run-dir", str(run_dir)]
    for item in _overrides(source):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = run_dir / "pretrain" / "checkpoints"
    deadline = time.time() + 120
    try:
        while not any(checkpoints.glob("step_*/state.json")):
            if proc.poll() is not None:
                raise AssertionError(f"pretraining ended before a checkpoint: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                raise AssertionError("no checkpoint within 120 s")
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no handler, no cleanup
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_pretraining_resumes_to_the_same_final_loss(tiny_source, tmp_path, caplog):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    code = _kill_after_first_checkpoint(killed_dir, tiny_source)
    assert code == -9
    assert not (killed_dir / "pretrain" / "manifest.json").exists()
    stopped_at = int(sorted((killed_dir / "pretrain" / "checkpoints").glob("step_*"))[-1].name.split("_")[1])
    assert 0 < stopped_at < 30

    cfg = C.resolve(["tiny"], _overrides(tiny_source))
    with caplog.at_level(logging.INFO, logger="distillation.checkpoint"):
        resumed = staged(pretrain.run, cfg, killed_dir)
    assert f"step {stopped_at})" in caplog.text  # it continued, it did not start over
    clean = staged(pretrain.run, cfg, clean_dir)

    assert resumed.metrics["steps"] == clean.metrics["steps"] == 30
    assert resumed.metrics["tokens"] == clean.metrics["tokens"]
    assert resumed.metrics["heldout_loss"] == pytest.approx(clean.metrics["heldout_loss"], rel=1e-5, abs=1e-7)
    killed_rows, clean_rows = _loss_rows(killed_dir), _loss_rows(clean_dir)
    assert len(killed_rows) == len(clean_rows) == 30
    for a, b in zip(killed_rows[stopped_at:], clean_rows[stopped_at:], strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5, abs=1e-7)
    assert read_manifest(killed_dir, "pretrain").metrics["embedding_cosine"] == pytest.approx(
        clean.metrics["embedding_cosine"], abs=1e-6)
