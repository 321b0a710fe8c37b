"""A run made before the layout change (pretraining inside optimize/, hand-written config checks, no
deploy gate) is read correctly where its artifacts still mean the same, and refused with one line
naming the stage to rerun where they do not."""

from __future__ import annotations

import json

import pytest
from conftest import write_fake_finetune

from bort import artifacts
from bort import config as C
from bort.errors import ArtifactError


def old_config() -> dict:
    """A manifest's config as bort wrote it before: keys that have since moved, none of the new ones."""
    data = C.resolve(["tiny"]).to_dict()
    data["finetune"]["select_metric"] = "accuracy"
    data["finetune"]["labeller_min_dev_accuracy"] = 2 / 3
    del data["finetune"]["labeller_min_margin"], data["task"]["metric"], data["budgets"]
    for key in ("objective", "error_init", "error_layer_selection", "error_weight_decay", "error_grad_clip"):
        data["optimize"].pop(key, None)
    return data


def rewrite_as_old(run_dir, stage: str, fingerprint: str = "0123456789abcdef") -> None:
    path = run_dir / stage / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(config=old_config(), fingerprint=fingerprint, command="bort.cli " + stage)
    path.write_text(json.dumps(manifest))


def test_an_old_search_is_read_for_its_shape_and_rerun_by_bort_run(tmp_path):
    cfg = C.resolve(["tiny"])
    (tmp_path / "optimize").mkdir()
    (tmp_path / "optimize" / "chosen.json").write_text(json.dumps({"arch": {"layers": 1, "heads": 3, "hidden": 21,
                                                                            "intermediate": 20}}))
    artifacts.write_manifest(tmp_path, "optimize", cfg, fingerprint="old", metrics={"chosen": "1/3/21/20"})
    rewrite_as_old(tmp_path, "optimize")
    from pretrain import stage as pretrain

    arch, upstream = pretrain.target_arch(cfg, tmp_path)  # read correctly: the shape it chose
    assert arch.label() == "1/3/21/20" and upstream == {"optimize": "0123456789abcdef"}
    fingerprint = artifacts.stage_fingerprint(cfg, "optimize")
    assert not artifacts.is_up_to_date(tmp_path, "optimize", fingerprint)  # `bort run` searches again


def test_an_old_finetune_is_refused_by_export_with_one_line_naming_bort_finetune(tmp_path, minilm_dir):
    from serve import export

    write_fake_finetune(tmp_path, minilm_dir)
    path = tmp_path / "finetune" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["metrics"]["deploy_gate"]
    manifest["config"] = old_config()
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"older bort\): rerun `bort finetune`") as e:
        export.run(C.resolve(["tiny"]), tmp_path)
    assert "\n" not in str(e.value)


def test_an_old_config_file_gets_one_line_saying_where_a_moved_key_went(tmp_path):
    from bort.errors import ConfigError

    f = tmp_path / "old.yaml"
    f.write_text("finetune:\n  select_metric: macro_f1\n")
    with pytest.raises(ConfigError, match=r"finetune.select_metric is gone; use task.metric"):
        C.resolve([f])
