"""`bort pretrain` as a stage: shape from the search or from --set, outputs, manifest, up-to-date skip."""

from __future__ import annotations

import csv

import pytest
from conftest import staged

from bort import config as C
from bort import families as F
from bort.artifacts import atomic_write_json, write_manifest
from bort.errors import ArtifactError, ConfigError
from pretrain import stage as pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = ["pretrain.layers=1", "pretrain.heads=3", "pretrain.hidden=21", "pretrain.intermediate=20"]



def test_stage_writes_a_loadable_model_curve_and_metrics(tiny_source, tmp_path):
    cfg = C.resolve(["tiny"], [f"source.model={tiny_source}", *SHAPE])
    manifest = staged(pretrain.run, cfg, tmp_path)
    m = manifest.metrics
    assert m["steps"] == 8 and m["init"] == "inherit" and m["shape"] == "1/3/21/20"
    assert m["tokens"] > 0 and m["loss"] == "representation"
    assert -1.0 <= m["embedding_cosine"] <= 1.0 and m["heldout_loss"] > 0
    model_dir = tmp_path / "pretrain" / "model"
    student = F.load_encoder(model_dir)
    assert F.arch_of(student.config) == F.Arch(1, 3, 21, 20)
    assert sum(p.numel() for p in student.parameters()) == m["params"]["net"]
    assert (model_dir / "tokenizer.json").is_file() and (model_dir / "model.safetensors").is_file()
    with open(tmp_path / "pretrain" / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert rows[3]["heldout_loss"] and not rows[2]["heldout_loss"]
    assert (tmp_path / "pretrain" / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "pretrain" / "checkpoints").exists()  # finished: checkpoints removed
    again = staged(pretrain.run, cfg, tmp_path)
    assert again.created_at == manifest.created_at  # up to date: skipped


def test_a_time_limit_that_binds_is_said_in_the_manifest_and_the_log(tiny_source, tmp_path, caplog):
    cfg = C.resolve(["tiny"], [f"source.model={tiny_source}", *SHAPE, "pretrain.max_steps=1000000",
                               "pretrain.time_budget_s=1", "pretrain.checkpoint_every=0"])
    with caplog.at_level("WARNING", logger="pretrain.stage"):
        m = staged(pretrain.run, cfg, tmp_path).metrics
    assert m["stopped_by"] == "time" and 0 < m["steps"] < 1000000
    assert "time limit stopped training" in caplog.text and "pretrain.time_budget_s" in caplog.text


def test_shape_comes_from_the_search_when_not_set(tiny_source, tmp_path):
    cfg = C.resolve(["tiny"], [f"source.model={tiny_source}"])
    with pytest.raises(ArtifactError, match="bort optimize"):
        pretrain.target_arch(cfg, tmp_path)
    atomic_write_json(tmp_path / "optimize" / "chosen.json",
                      {"arch": {"layers": 1, "heads": 3, "hidden": 21, "intermediate": 20}, "label": "1/3/21/20"})
    searched = write_manifest(tmp_path, "optimize", cfg, fingerprint="f00d", metrics={})
    arch, upstream = pretrain.target_arch(cfg, tmp_path)
    assert arch == F.Arch(1, 3, 21, 20) and upstream == {"optimize": searched.fingerprint}
    by_hand = C.resolve(["tiny"], [f"source.model={tiny_source}", *SHAPE[:3], "pretrain.intermediate=7"])
    assert pretrain.target_arch(by_hand, tmp_path) == (F.Arch(1, 3, 21, 7), {})


def test_shape_must_be_set_whole():
    with pytest.raises(ConfigError, match="pretrain.layers/heads/hidden/intermediate"):
        C.resolve(["tiny"], ["pretrain.layers=2"])
    with pytest.raises(ConfigError, match="pretrain.layer_selection"):
        C.resolve(["tiny"], ["pretrain.layer_selection=best"])


@pytest.mark.slow
@pytest.mark.integration
def test_pretrain_on_the_embedded_default_keeps_the_teacher_close(tmp_path):
    """MiniLM -> 3/12/384/1536 on Rotten Tomatoes text, quick budget: the student stays near the teacher."""
    cfg = C.resolve(["quick"], ["pretrain.layers=3", "pretrain.heads=12", "pretrain.hidden=384",
                                "pretrain.intermediate=1536", "pretrain.time_budget_s=60"])
    m = staged(pretrain.run, cfg, tmp_path).metrics
    assert m["embedding_cosine"] > 0.8
    first = float(next(csv.DictReader(open(tmp_path / "pretrain" / "loss.csv")))["loss"])
    assert m["heldout_loss"] < first


def test_a_cuda_device_is_refused_with_one_line_where_torch_sees_none(tiny_source, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = C.resolve(["tiny"], [f"source.model={tiny_source}", *SHAPE, "pretrain.device=cuda"])
    with pytest.raises(ConfigError, match=r"pretrain.device='cuda', but torch sees 0 CUDA device\(s\)") as e:
        staged(pretrain.run, cfg, tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="pretrain.device"):
        C.resolve([], ["pretrain.device=tpu"])
