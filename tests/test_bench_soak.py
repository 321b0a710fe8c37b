"""bench/soak.py, shortened to seconds on a tiny model: it drives a real server and writes its verdict."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from serve.server import deployed_folder


def test_a_short_soak_on_a_tiny_model_passes_and_writes_its_results(tiny_export_run, tmp_path):
    folder = deployed_folder(tiny_export_run, "optimized")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--model-dir", str(folder),
                           "--profile", "tiny", "--duration-s", "6", "--warmup-s", "2", "--window-s", "2",
                           "--users", "4", "--set", "serve.num_threads=1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["passed"] and summary["failures"] == 0 and summary["statuses"].get("200", 0) > 50
    rss = summary["rss_mb"]
    assert 50 < rss["after_warmup"] <= rss["peak"] and abs(rss["growth"]) <= 0.10
    assert len(summary["rss_samples_mb"]) >= 6 and summary["latency_ms"]["p50"] > 0
    assert "**PASS**" in (tmp_path / "soak.md").read_text()


def test_memory_growth_or_a_non_503_failure_fails_the_soak():
    sys.path.insert(0, str(ROOT / "bench"))
    import soak

    args = soak.parse_args(["--model-dir", "x", "--duration-s", "20", "--window-s", "5"])
    tally = soak.Tally()
    tally.statuses.update({200: 100, 503: 7})
    tally.latencies_ms = [5.0, 6.0, 7.0]
    flat = [(t, 300.0) for t in range(20)]
    assert soak.summarise(tally, flat, args, "m")["passed"]  # 503s are shed, not failed
    growing = [(t, 300.0 + 4 * t) for t in range(20)]
    summary = soak.summarise(tally, growing, args, "m")
    assert not summary["passed"] and not summary["memory_ok"] and summary["rss_mb"]["growth"] > 0.1
    tally.fail("HTTP 500", "internal error")
    assert not soak.summarise(tally, flat, args, "m")["passed"]
