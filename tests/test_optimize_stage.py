"""`bort optimize` end to end: a tiny odd-sized source (default run) and the embedded default (slow)."""

import json

import pytest
from conftest import staged

from bort import config
from bort.artifacts import read_manifest
from bort.errors import BortError
from optimize import latency, stage, timing


@pytest.fixture(scope="module")
def latency_cache_file(tmp_path_factory):
    return tmp_path_factory.mktemp("latency") / "latency.jsonl"  # shared by this module's tests


@pytest.fixture
def isolated_latency_cache(latency_cache_file, monkeypatch):
    """Keep test shapes out of the project's real latency cache."""
    monkeypatch.setattr(latency, "default_cache_path", lambda hw=None: latency_cache_file)
    return latency_cache_file


def tiny_cfg(tiny_source, *extra):
    return config.resolve(["tiny"], [f"source.model={tiny_source}", *extra])


def test_stage_writes_every_output_and_resumes_without_remeasuring(tmp_path, tiny_source, isolated_latency_cache):
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(tiny_source, "optimize.error_estimator=proxy")
    manifest = staged(stage.run, cfg, run_dir)
    out = run_dir / "optimize"
    for name in ("candidates.csv", "candidates.json", "front.json", "chosen.json", "report.md", "pareto.png",
                 "abnc.json", "errors.jsonl"):
        assert name in manifest.outputs, name
    m = manifest.metrics
    assert m["n_candidates"] == 4 and m["front_size"] >= 1
    assert m["speedup"] == pytest.approx(m["source_latency_ms"] / m["chosen_latency_ms"], rel=1e-3)
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen["arch"]) == {"layers", "heads", "hidden", "intermediate"} and chosen["family"] == "bert"
    assert chosen["label"] == m["chosen"]
    rows = json.loads((out / "candidates.json").read_text())
    assert all(r["p50_ms"] is not None and r["error"] is not None for r in rows)
    assert "## ABnC checks" in (out / "report.md").read_text()
    assert "runtime/recipe.py" in timing.EXPORTER and timing.EXPORTER in (out / "report.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    assert staged(stage.run, cfg, run_dir).created_at == manifest.created_at  # up to date: skipped
    changed = staged(stage.run, tiny_cfg(tiny_source, "optimize.error_estimator=proxy", "optimize.weights=[0,0,1]"), run_dir)
    assert changed.metrics["new_latency_measurements"] == 0
    assert changed.metrics["chosen"] == "2/3/33/37"  # error only: the source itself (proxy error 0)


def test_unsatisfiable_budget_fails_with_one_line_after_writing_the_figures(tmp_path, tiny_source,
                                                                           isolated_latency_cache):
    cfg = tiny_cfg(tiny_source, "optimize.error_estimator=proxy", "optimize.policy=latency_budget",
                   "optimize.latency_budget_ms=0.0000001")
    with pytest.raises(BortError, match="latency_budget_ms"):
        staged(stage.run, cfg, tmp_path / "run")
    assert (tmp_path / "run" / "optimize" / "candidates.csv").is_file()
    with pytest.raises(BortError, match="bort optimize"):
        read_manifest(tmp_path / "run", "optimize")


@pytest.mark.slow
def test_stage_with_distillation_errors_on_the_tiny_source(tmp_path, tiny_source, isolated_latency_cache):
    run_dir = tmp_path / "run"
    manifest = staged(stage.run, tiny_cfg(tiny_source), run_dir)
    assert manifest.metrics["error_estimator"] == "distill"
    stored = [json.loads(line) for line in (run_dir / "optimize" / "errors.jsonl").read_text().splitlines()]
    assert len(stored) == manifest.metrics["n_trained"] >= 1
    assert all(s["error"] >= 0 for s in stored)


@pytest.mark.slow
@pytest.mark.integration
def test_quick_profile_on_the_embedded_default(tmp_path):
    cfg = config.resolve(["quick"])
    manifest = staged(stage.run, cfg, tmp_path / "run")
    m = manifest.metrics
    assert m["n_candidates"] == 8 and m["chosen"] and m["source_latency_ms"] > 0
    chosen = json.loads((tmp_path / "run" / "optimize" / "chosen.json").read_text())
    assert chosen["arch"]["hidden"] % chosen["arch"]["heads"] == 0
    assert chosen["arch"]["layers"] <= 6 and chosen["arch"]["hidden"] <= 384
