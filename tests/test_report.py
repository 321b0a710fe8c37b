"""The run report: every figure equals the one in the stage manifest it names."""

import json

from bort import artifacts as A
from bort import config as C
from pipeline import report as R

METRICS = {
    "optimize": {"n_candidates": 24, "front_size": 5, "chosen": "3/6/384/768", "chosen_params_net": 15_000_000,
                 "chosen_latency_ms": 1.234567, "source_latency_ms": 4.5, "speedup": 3.6457},
    "pretrain": {"init": "inherit", "steps": 300, "heldout_loss": 0.0123, "embedding_cosine": 0.93},
    "finetune": {"accuracy": {"labeller": 0.842, "plain": 0.81, "agora": 0.83}, "deploy": "agora",
                 "macro_f1": {"labeller": 0.84, "plain": 0.8, "agora": 0.82}},
    "export": {"parity_max_abs_diff": 3.1e-6, "int8_drop_points": 0.25, "deployed": {"optimized": "int8"}},
    "loadtest": {"baseline": "source_onnx", "rps_ratio": 2.5, "p50_ratio": 2.7, "failures": 0},
}


def _write_fake_run(run_dir):
    cfg = C.resolve()
    for stage, metrics in METRICS.items():
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "note.txt").write_text(stage)
        A.write_manifest(run_dir, stage, cfg, fingerprint=stage * 2, metrics=metrics)


def test_every_report_figure_equals_its_manifest(tmp_path):
    _write_fake_run(tmp_path)
    paths = R.write_run_report(tmp_path, timings=[{"stage": "optimize", "seconds": 1.0, "skipped": False}])
    md = paths["md"].read_text()
    figures = json.loads(paths["json"].read_text())["figures"]
    checked = 0
    for f in figures:
        manifest_value = R.lookup(A.read_manifest(tmp_path, f["stage"]).metrics, f["key"])
        assert f["value"] == manifest_value, f
        assert f"| {f['label']} | {f['text']} |" in md
        checked += f["value"] is not None
    assert checked == sum(len(_flat(m)) for m in METRICS.values())
    assert "<table>" in paths["html"].read_text()


def test_missing_stage_shows_not_available(tmp_path):
    paths = R.write_run_report(tmp_path)
    assert "| Agora accuracy | n/a |" in paths["md"].read_text()


def test_format_is_stable():
    assert R.fmt(1.234567) == "1.235" and R.fmt(15_000_000) == "15,000,000" and R.fmt(None) == "n/a"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
