"""A model that learned nothing never ships: `bort run` on Rotten Tomatoes subsampled to 85/15.

Tiny stand-in models (a random 2-layer source, a few steps of everything) cannot learn the task, so
the student the finetune stage picks is at best a near-constant classifier: the deploy gate must
stop the run before anything is exported, with one line, and the reports must carry the majority
baseline and the metric the task is judged by (MCC: the classes are skewed).
"""

from __future__ import annotations

import csv
import json

import pytest

from bort import config as C
from bort import data


@pytest.fixture(scope="module")
def skewed_task(tmp_path_factory):
    """Rotten Tomatoes, 85% fresh and 15% rotten (1,200 snippets), films kept whole."""
    task = data.load_task(C.resolve())
    rows = task.train + task.dev + task.test
    by_label = {name: [e for e in rows if task.labels[e.label] == name] for name in ("fresh", "rotten")}
    picked = by_label["fresh"][:1020] + by_label["rotten"][:180]
    path = tmp_path_factory.mktemp("skewed") / "rt-85-15.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "film"])
        writer.writerows((e.text, task.labels[e.label], e.group) for e in picked)
    return path


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, skewed_task, tiny_source):
    from pipeline.cli import main

    run_dir = tmp_path_factory.mktemp("gate") / "run"
    settings = [f"task.name={skewed_task}", f"source.model={tiny_source}", "task.group_column=film",
                "optimize.error_estimator=proxy"]
    argv = ["run", "--profile", "tiny", "--run-dir", str(run_dir)] + [a for s in settings for a in ("--set", s)]
    return run_dir, argv, main, settings


def test_bort_run_exits_2_with_one_line_and_exports_nothing(stopped_run, capsys, monkeypatch, tmp_path):
    from optimize import latency

    monkeypatch.setattr(latency, "default_cache_path", lambda hw=None: tmp_path / "latency.jsonl")
    run_dir, argv, main, _ = stopped_run
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "deploy gate" in err[0] and "MCC" in err[0] and "--force" in err[0]
    assert not (run_dir / "export" / "deployed.json").exists() and not (run_dir / "loadtest").exists()
    facts = json.loads((run_dir / "finetune" / "manifest.json").read_text())["metrics"]
    assert facts["metric"] == "mcc" and "85" in facts["metric_reason"]


def test_every_report_table_carries_the_majority_baseline_and_the_metric(stopped_run):
    run_dir = stopped_run[0]
    finetune = (run_dir / "finetune" / "report.md").read_text()
    assert "Models are picked by dev **MCC**" in finetune
    assert "| *baseline: always the majority class* |" in finetune and "test MCC" in finetune
    run = (run_dir / "report.md").read_text()
    assert "**The run stopped: `bort export` refused: deploy gate" in run
    assert "| models are judged by (task metric) | mcc |" in run
    assert "| baseline: always the majority class, MCC | 0 |" in run
    assert "The run stopped" in (run_dir / "report.html").read_text()


def test_force_deploys_anyway_and_the_manifest_flags_it(stopped_run):
    from bort.artifacts import read_manifest
    from serve import export

    run_dir, _, _, settings = stopped_run
    export.run(C.resolve(["tiny"], [*settings, "export.force=true", "export.register_bentoml=false"]), run_dir)
    gate = read_manifest(run_dir, "export").metrics["gate"]
    assert gate["forced"] and not gate["passed"]
