"""The layout: the core knows no stage, the one stage table is what the CLI and `bort run` use,
and configuration flows downstream only (a pretrain setting never makes the search stale)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from conftest import ROOT, staged

from bort import config as C
from bort.stages import PIPELINE, STAGES, stage

STAGE_PACKAGES = {"optimize", "pretrain", "agora", "serve", "loadtest", "pipeline"}
LIBRARIES = {"distillation", "runtime"}


def _imports(path: Path) -> set[str]:
    """Top-level package of every import in a file, plus any module named to importlib."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "bort").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_stage_and_no_library(path):
    assert not _imports(path) & (STAGE_PACKAGES | LIBRARIES)


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_libraries_import_only_the_core(library):
    for path in (ROOT / library).glob("*.py"):
        assert not _imports(path) & STAGE_PACKAGES, path


@pytest.mark.parametrize("package", sorted(STAGE_PACKAGES - {"pipeline"}))
def test_no_stage_imports_another_stage(package):
    for path in (ROOT / package).glob("*.py"):
        assert not _imports(path) & (STAGE_PACKAGES - {package}), path


def test_every_stage_in_the_table_resolves_to_a_function_with_the_stage_signature():
    import inspect

    from pipeline.cli import entry_point

    for s in STAGES:
        params = list(inspect.signature(entry_point(s)).parameters)
        assert params[:3] == ["cfg", "run_dir", "args"], s.name


def test_the_table_is_consistent_with_the_config_and_itself():
    sections = {f.name for f in dataclasses.fields(C.RunConfig)} if dataclasses.is_dataclass(C.RunConfig) \
        else set(C.RunConfig.model_fields)
    order = [s.name for s in STAGES]
    for s in STAGES:
        assert set(s.sections) <= sections, s.name
        for up in s.upstream:
            assert order.index(up) < order.index(s.name), f"{s.name} reads {up}, which comes later"
            assert stage(up).artifact, f"{s.name} reads {up}, which writes no manifest"
    assert [s.name for s in PIPELINE] == ["optimize", "pretrain", "finetune", "export", "loadtest"]


def test_the_cli_offers_every_stage_of_the_table_and_nothing_else():
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {s.name for s in STAGES} | {"run", "sources"}


def test_the_search_does_not_depend_on_pretrain_settings():
    cfg = C.resolve(["tiny"])
    changed = C.resolve(["tiny"], ["pretrain.max_steps=3", "pretrain.lr=0.01", "pretrain.init=random"])
    assert "pretrain" not in stage("optimize").sections
    assert cfg.section_fingerprint(*stage("optimize").sections) == \
        changed.section_fingerprint(*stage("optimize").sections)
    assert cfg.section_fingerprint(*stage("pretrain").sections) != \
        changed.section_fingerprint(*stage("pretrain").sections)


def test_changing_a_pretrain_setting_reruns_pretraining_and_what_follows_not_the_search(
        tmp_path, tiny_source, monkeypatch):
    from optimize import latency
    from optimize import stage as optimize_stage
    from pretrain import stage as pretrain_stage

    monkeypatch.setattr(latency, "default_cache_path", lambda hw=None: tmp_path / "latency.jsonl")
    base = [f"source.model={tiny_source}", "optimize.error_estimator=proxy"]
    cfg = C.resolve(["tiny"], base)
    searched = staged(optimize_stage.run, cfg, tmp_path)
    pretrained = staged(pretrain_stage.run, cfg, tmp_path)
    changed = C.resolve(["tiny"], [*base, "pretrain.max_steps=4"])
    assert staged(optimize_stage.run, changed, tmp_path).created_at == searched.created_at  # skipped
    again = staged(pretrain_stage.run, changed, tmp_path)
    assert again.fingerprint != pretrained.fingerprint and again.metrics["steps"] == 4
    # finetune's fingerprint takes pretrain's: what follows is stale too
    from bort.artifacts import stage_fingerprint

    assert stage_fingerprint(changed, "finetune", {"pretrain": again.fingerprint}) != \
        stage_fingerprint(cfg, "finetune", {"pretrain": pretrained.fingerprint})


def test_a_fingerprint_may_only_take_the_upstream_the_table_lists():
    from bort.artifacts import stage_fingerprint

    with pytest.raises(ValueError, match="optimize"):
        stage_fingerprint(C.resolve(["tiny"]), "optimize", {"finetune": "x"})
