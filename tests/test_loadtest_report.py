"""Parsing Locust's CSVs, the optimised/baseline ratios, the SLO verdict and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bort.errors import BortError
from loadtest import render, report
from loadtest.locust_run import Profile
from loadtest.measure import assemble

# As Locust 2.47 writes them (--csv PREFIX): a route row and the Aggregated row.
STATS_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/classify,89,2,44,45.08,43.73,51.87,88.65,44.63,1.0,44,44,48,48,48,48,48,52,52,52,52
,Aggregated,89,2,44,45.08,43.73,51.87,88.65,44.63,1.0,44,44,48,48,48,49,50,52,52,52,52
"""
HISTORY_CSV = """Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,Total Average Content Size
1795867590,0,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1795867591,2,,Aggregated,40.5,0.000000,48,48,48,48,48,52,78,78,78,78,78,40,0,48,46.8,26.0,77.7,88.6
"""


def write_run(folder, name, latencies_ms, failed=0, users=2):
    """A canned run: Locust's two CSVs plus a samples file from two Locust processes."""
    (folder / f"{name}_stats.csv").write_text(STATS_CSV)
    (folder / f"{name}_stats_history.csv").write_text(HISTORY_CSV)
    rows = [f"{0.01 * (i + 1):.4f},{users},{ms},{0 if i < failed else 1}" for i, ms in enumerate(latencies_ms)]
    half = len(rows) // 2
    for pid, part in ((101, rows[:half]), (102, rows[half:])):
        (folder / f"{name}.{pid}.csv").write_text("t_s,users,latency_ms,ok\n" + "\n".join(part) + "\n")
    return folder / name


def test_locust_stats_and_history_are_parsed(tmp_path):
    prefix = write_run(tmp_path, "run", [1.0, 2.0])
    stats = report.read_locust_stats(prefix)
    assert stats == {"requests": 89, "failures": 2, "rps": 44.63, "mean_ms": 45.08, "p50_ms": 44.0,
                     "p95_ms": 49.0, "p99_ms": 52.0, "max_ms": 51.87}
    history = report.read_locust_history(prefix)
    assert [h["users"] for h in history] == [0, 2]
    assert history[0]["p50_ms"] is None and history[1]["requests"] == 40


def test_missing_stats_file_names_the_log(tmp_path):
    with pytest.raises(BortError, match="Locust wrote no statistics"):
        report.read_locust_stats(tmp_path / "nothing")


def test_run_figures_come_from_exact_samples_with_locust_beside(tmp_path):
    latencies = list(np.linspace(1.0, 100.0, 100))  # 100 requests over 1.00 s
    prefix = write_run(tmp_path, "run", latencies, failed=3)
    fig = report.summarize_run(prefix, users=2, duration_s=1)
    assert fig["requests"] == 100 and fig["failures"] == 3 and fig["failure_ratio"] == 0.03
    assert fig["rps"] == pytest.approx(100.0)
    assert fig["p50_ms"] == pytest.approx(50.5) and fig["p99_ms"] == pytest.approx(99.01)
    assert fig["source"] == "samples" and fig["locust"]["p50_ms"] == 44.0


def levels(rps, p50, p95=10.0, failures=0, requests=100):
    return {"rps": rps, "p50_ms": p50, "p95_ms": p95, "failures": failures, "requests": requests,
            "failure_ratio": failures / requests}


def test_ratios_are_optimised_over_baseline_for_rps_and_baseline_over_optimised_for_p50():
    base = {"1": levels(5.0, 200.0), "8": levels(5.0, 1600.0)}
    opt = {"1": levels(100.0, 10.0), "8": levels(110.0, 80.0)}
    ratios = report.compare(base, opt)
    assert ratios == {"1": {"rps_ratio": 20.0, "p50_ratio": 20.0}, "8": {"rps_ratio": 22.0, "p50_ratio": 20.0}}
    assert report.headline(ratios) == {"rps_ratio": 22.0, "rps_ratio_users": 8, "p50_ratio": 20.0,
                                       "p50_ratio_users": 1}


@pytest.mark.parametrize("slo, missed", [
    (report.Slo(), 0),
    (report.Slo(p95_ms=12.0), 0),
    (report.Slo(p95_ms=9.0), 2),  # both user counts over budget
    (report.Slo(min_speedup=21.0), 1),  # rps ratio 22 holds, p50 ratio 20 does not
    (report.Slo(min_speedup=30.0), 2),
    (report.Slo(max_failure_ratio=0.01), 1),  # the baseline at 8 users failed 5%
])
def test_slo_verdict(slo, missed):
    models = {"baseline": {"levels": {"1": levels(5.0, 200.0), "8": levels(5.0, 1600.0, failures=5)}},
              "optimized": {"levels": {"1": levels(100.0, 10.0), "8": levels(110.0, 80.0)}}}
    ratios = report.compare(models["baseline"]["levels"], models["optimized"]["levels"])
    assert len(report.check_slo(models, ratios, slo)) == missed


def test_report_files_are_written_with_speed_only_labelled(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    models = {}
    for role, scale in (("baseline", 10.0), ("optimized", 1.0)):
        lv = {}
        for users in (1, 2):
            prefix = write_run(raw, f"{role}_u{users}", list(scale * np.linspace(1, 3, 50)), users=users)
            lv[str(users)] = report.summarize_run(prefix, users, 1)
        models[role] = {"label": f"{role} model", "speed_only": role == "baseline", "accuracy": None,
                        "accuracy_note": "", "levels": lv}
    profiles = [Profile(users=u, duration_s=1, warmup_s=1) for u in (1, 2)]
    conditions = {"server": "stand-in", "num_threads": 2, "server_cpus": "all", "locust_cpus": "all",
                  "texts": 3, "baseline": "shape:2/2/8/8"}
    results = assemble(models, profiles, conditions, report.Slo(p95_ms=0.5))
    assert results["slo"]["exit_code"] == report.SLO_EXIT_CODE
    render.write_report(results, tmp_path, raw)
    md = (tmp_path / "report.md").read_text()
    assert "speed only" in md and "10.00x" in md and "Missed" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert (tmp_path / render.LATENCY_PNG).stat().st_size > 1000 and (tmp_path / render.RPS_PNG).is_file()
    json.dumps(results)  # results.json must be plain JSON


def test_report_accuracy_is_the_served_files_own_when_export_scored_it():
    from types import SimpleNamespace

    from loadtest.services import accuracies

    finetune = SimpleNamespace(metrics={"deploy": "agora", "accuracy": {"labeller": 0.84, "agora": 0.83}})
    old = SimpleNamespace(metrics={"deployed": {"optimized": "int8"}, "parity_max_abs_diff": 2e-6,
                                   "roles": {"optimized": {"int8_drop_points": 0.3}}})
    acc = accuracies(finetune, old)  # an export without test scores: PyTorch figures, int8 effect noted
    assert acc["optimized"] == 0.83 and "PyTorch" in acc["optimized_note"] and "0.30 points" in acc["optimized_note"]
    assert acc["labeller"] == 0.84
    new = SimpleNamespace(metrics={"deployed": {"optimized": "int8"}, "parity_max_abs_diff": 2e-6, "roles": {
        "optimized": {"int8_drop_points": 0.3, "test_accuracy": {"fp32": 0.83, "int8": 0.825}},
        "baseline": {"test_accuracy": {"fp32": 0.8401, "int8": 0.839}}}})
    acc = accuracies(finetune, new)
    assert acc["optimized"] == 0.825 and "as served (ONNX int8)" in acc["optimized_note"]
    assert acc["labeller"] == 0.8401 and acc["labeller_pytorch"] == 0.84


def test_the_accuracy_table_puts_the_majority_baseline_and_the_chance_metric_beside_each_model():
    results = {"models": {
        "baseline": {"label": "source", "accuracy": 0.84, "scores": {"accuracy": 0.84, "mcc": 0.66}},
        "optimized": {"label": "student", "accuracy": 0.80, "scores": {"accuracy": 0.80, "mcc": 0.58}}},
        "judging": {"metric": "accuracy", "chance_metric": "mcc", "baselines": {
            "majority": {"accuracy": 0.58, "mcc": 0.0}, "stratified": {"accuracy": 0.51, "mcc": 0.0}}}}
    title, header, rows = render.accuracy_table(results)
    assert header == ["model", "accuracy", "MCC", "note"] and "judged by accuracy" in title
    assert rows[1][:3] == ["student", "0.8000", "0.5800"]
    assert rows[2][:3] == ["baseline: always the majority class", "0.5800", "0.0000"]
    assert rows[3][0] == "baseline: stratified random (expected)"
