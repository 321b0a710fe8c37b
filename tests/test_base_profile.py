"""The base-size profile: its config resolves, and its first stages run on a tiny MPNet stand-in."""

from __future__ import annotations

import pytest
from conftest import staged

from bort import config as C
from bort import families as F


def test_the_base_profiles_resolve_to_an_mpnet_source_and_a_served_speedup_target():
    cfg = C.resolve(["base"])
    assert cfg.source.model == "mpnet" and cfg.optimize.objective == "served"
    assert (cfg.optimize.policy, cfg.optimize.speedup_target) == ("speedup", 8.0)
    long = C.resolve(["base", "long-texts"], ["task.name=bbc_news"])
    assert long.finetune.seq_len == long.export.seq_len == long.serve.max_seq_len == 256
    assert long.source.model == "mpnet" and long.task.name == "bbc_news"
    from bort import data

    assert len(data.check_servable(data.load_task(long), long).test) == 222  # every article within serve.max_chars
    from optimize.grid import make_grid

    grid = make_grid("source", F.Arch(12, 12, 768, 3072), cfg.optimize)
    assert len(grid) == 40 and {a.layers for a in grid} == {1, 2, 3, 4, 6} and {a.hidden for a in grid} == {192, 384}


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory, minilm_dir):
    """A random MPNet with 12 layers and 12 heads (so the profile's fractions apply) and a real tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_mpnet")
    model = F.random_model(F.Arch(12, 12, 48, 96), "mpnet", seed=0)
    model.save_pretrained(folder, safe_serialization=True)
    F.load_tokenizer(minilm_dir).save_pretrained(folder)
    return folder


def test_the_first_stages_of_the_base_profile_run_on_a_tiny_stand_in(tiny_mpnet, tmp_path, monkeypatch):
    from optimize import latency, served
    from optimize import stage as optimize_stage
    from pretrain import stage as pretrain_stage

    monkeypatch.setattr(latency, "default_cache_path", lambda hw=None: tmp_path / "latency.jsonl")
    monkeypatch.setattr(served, "PROBE_REQUESTS", 40)
    monkeypatch.setattr(served, "PROBE_WARMUP", 5)
    cfg = C.resolve(["base"], [f"source.model={tiny_mpnet}", "task.max_train_rows=200", "task.max_eval_rows=60",
                               "optimize.layer_fractions=[0.17, 0.5]", "optimize.head_fractions=[1.0]",
                               "optimize.timed_runs=3", "optimize.warmup_runs=1",
                               "optimize.error_estimator=proxy",
                               "optimize.speedup_target=1.2", "pretrain.max_steps=2", "pretrain.batch_size=4",
                               "pretrain.seq_len=16", "pretrain.heldout_texts=8", "pretrain.importance_batches=1"])
    searched = staged(optimize_stage.run, cfg, tmp_path)
    m = searched.metrics
    assert m["objective"] == "served" and m["fixed_ms"] > 0 and m["n_candidates"] == 8
    assert m["speedup"] >= 1.2  # the served speedup the policy asked for
    pretrained = staged(pretrain_stage.run, cfg, tmp_path)
    assert pretrained.metrics["steps"] == 2 and pretrained.metrics["shape"] == m["chosen"]
    assert F.load_encoder(tmp_path / "pretrain" / "model").config.model_type == "mpnet"
