"""The selectable baselines: an architecture-only shape (speed only) and the labeller in PyTorch."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import staged
from loadtest_support import tiny_cfg

from bort import data
from loadtest import shapes, stage

TINY_SHAPE = "2/3/33/37"


@pytest.mark.slow
def test_shape_folder_exports_fp32_and_int8_labelled_speed_only(tmp_path, minilm_dir):
    import numpy as np
    import onnxruntime as ort

    from bort import families as F

    arch = F.Arch.parse(TINY_SHAPE)
    int8 = shapes.shape_folder(arch, ["fresh", "rotten"], "int8", minilm_dir, root=tmp_path, max_seq_len=128)
    fp32 = int8.parent / "fp32"
    for folder, precision in ((fp32, "fp32"), (int8, "int8")):
        serving = json.loads((folder / "serving.json").read_text())
        assert serving["speed_only"] and serving["precision"] == precision and serving["labels"] == ["fresh", "rotten"]
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.ones((1, 7), dtype=np.int64) for i in session.get_inputs()}
        assert session.run(None, feeds)[0].shape == (1, 2)
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    assert shapes.shape_folder(arch, ["fresh", "rotten"], "int8", minilm_dir, root=tmp_path, max_seq_len=128) == int8
    assert "speed only" in shapes.shape_label(arch, "fp32")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("baseline", [f"shape:{TINY_SHAPE}", "source_torch"])
def test_stage_with_each_baseline_through_real_servers(tmp_path, tiny_export_run, baseline, monkeypatch):
    monkeypatch.setenv("BORT_CACHE", str(tmp_path / "cache"))  # the shape folder is built fresh here
    shutil.copytree(tiny_export_run, tmp_path / "run")
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(tmp_path, "loadtest.users=[1]", "loadtest.duration_s=2", f"loadtest.baseline={baseline}")
    data.prepare(cfg, run_dir)
    manifest = staged(stage.run, cfg, run_dir)
    m = manifest.metrics
    assert m["failures"] == 0 and m["models"]["baseline"]["1"]["requests"] > 5
    assert m["speed_only"]["baseline"] is baseline.startswith("shape:")
    if baseline.startswith("shape:"):
        assert m["accuracy"]["baseline"] is None and "speed only" in m["baseline"]
    else:
        assert "PyTorch" in m["baseline"] and m["accuracy"]["baseline"] == 0.5
