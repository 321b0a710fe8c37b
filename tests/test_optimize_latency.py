"""Latency measured in ONNX Runtime, the persistent cache, and resuming a killed sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bort.families import Arch
from optimize.latency import JsonlStore, LatencyMeter, LatencySettings

ROOT = Path(__file__).resolve().parent.parent
FAST = LatencySettings(batch_size=1, seq_len=16, precision="fp32", num_threads=1, warmup_runs=1, timed_runs=4)


def test_store_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    store = JsonlStore(path)
    store.put({"key": "a", "v": 1})
    with open(path, "a") as f:
        f.write('{"key": "b", "v"')  # a writer killed mid-line
    store = JsonlStore(path)
    assert store.get("a") == {"key": "a", "v": 1} and store.get("b") is None
    store.put({"key": "c", "v": 3})
    assert JsonlStore(path).get("c") == {"key": "c", "v": 3}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_meter_measures_once_paired_with_the_reference(tmp_path, precision):
    settings = LatencySettings(**{**FAST.__dict__, "precision": precision})
    ref, cand = Arch(2, 3, 33, 37), Arch(1, 3, 33, 16)
    meter = LatencyMeter("bert", settings, cache_path=tmp_path / "lat.jsonl", hw="testhw", reference=ref)
    record = meter(cand)
    assert meter.measured == 2  # the reference standalone, then the candidate beside it
    assert record["p50_ms"] > 0 and len(record["samples_ms"]) == len(record["ref_samples_ms"]) == 4
    assert record["p10_ms"] <= record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]
    assert record["load_avg_1m"] >= 0  # the load it was measured under travels with the record
    assert record["ratio_to_reference"] == pytest.approx(record["p50_ms"] / meter.reference_ms(), rel=0.5)
    again = LatencyMeter("bert", settings, cache_path=tmp_path / "lat.jsonl", hw="testhw", reference=ref)
    assert again(cand)["p50_ms"] == record["p50_ms"] and again.measured == 0
    other = LatencyMeter("bert", LatencySettings(**{**settings.__dict__, "seq_len": 8}),
                         cache_path=tmp_path / "lat.jsonl", hw="testhw", reference=ref)
    assert other.cached(cand) is None  # a different sequence length is a different measurement
    if precision == "fp32":
        more = LatencyMeter("bert", LatencySettings(**{**settings.__dict__, "timed_runs": 6}),
                            cache_path=tmp_path / "lat.jsonl", hw="testhw", reference=ref)
        assert more.cached(cand) is None  # too few runs on record for this protocol
        assert len(more(cand)["samples_ms"]) == 6 and more.measured == 2
        assert len(JsonlStore(tmp_path / "lat.jsonl").get(more.key(cand))["samples_ms"]) == 6


def test_latencies_timed_with_another_recipe_are_not_reused(tmp_path):
    arch = Arch(1, 3, 33, 16)
    meter = LatencyMeter("bert", FAST, cache_path=tmp_path / "lat.jsonl", hw="testhw")
    # A record keyed as the old exporter wrote it (no recipe in the key), then one of another recipe version.
    old_key = json.dumps([arch.label(), "bert", meter.vocab_size, 1, 16, "fp32", 1, "testhw", "standalone"])
    other = json.loads(meter.key(arch))
    other[-2] = "recipe0/o0/fp32"
    for key in (old_key, json.dumps(other)):
        meter.cache.put({"key": key, "samples_ms": [1.0] * FAST.timed_runs})
    assert meter.cached(arch) is None
    assert FAST.recipe_key() in json.loads(meter.key(arch))
    optimized = LatencySettings(**{**FAST.__dict__, "optimize_graph": True})
    assert LatencyMeter("bert", optimized, cache_path=tmp_path / "lat.jsonl", hw="testhw").key(arch) != meter.key(arch)


def test_a_record_timed_on_a_busy_machine_is_taken_again_once_the_machine_is_quiet(tmp_path, monkeypatch):
    import psutil

    arch = Arch(1, 3, 33, 16)
    meter = LatencyMeter("bert", FAST, cache_path=tmp_path / "lat.jsonl", hw="testhw")
    meter.cache.put({"key": meter.key(arch), "samples_ms": [9.0] * FAST.timed_runs, "load_avg_1m": 99.0})
    monkeypatch.setattr(psutil, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert meter.cached(arch) is not None  # still busy: measuring again would give no better figure
    monkeypatch.setattr(psutil, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert meter.cached(arch) is None
    record = meter(arch)
    assert meter.measured == 1 and record["load_avg_1m"] == 0.2 and record["samples_ms"] != [9.0] * FAST.timed_runs


SHAPES = [f"1/1/{h}/{i}" for h in (8, 16) for i in (8, 16, 24)]


def _sweep(cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "optimize.latency", "--cache", str(cache), "--seq-len", "8", "--threads", "1",
           "--warmup-runs", "1", "--timed-runs", "3", "--archs", *SHAPES]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _keys(cache: Path) -> list[str]:
    keys = []
    for line in cache.read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except ValueError:
            pass  # the line the kill tore
    return keys


def test_a_killed_sweep_resumes_without_measuring_anything_twice(tmp_path):
    cache = tmp_path / "lat.jsonl"
    proc = _sweep(cache)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (cache.is_file() and _keys(cache)):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    before = _keys(cache)
    assert 1 <= len(before) < len(SHAPES)
    rerun = _sweep(cache)
    out, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out
    after = _keys(cache)
    assert len(after) == len(set(after)) == len(SHAPES)  # every shape once: zero repeated measurements
    assert after[:len(before)] == before
    assert f"measured {len(SHAPES) - len(before)} new, {len(before)} from cache" in out


def test_bursts_of_other_work_on_one_run_of_a_pair_do_not_set_the_ratio():
    """Pairing cancels a slowdown spanning both runs; a burst on one run of a pair does not cancel.
    The quiet runs decide, and a quiet record keeps its plain median ratio."""
    from optimize.latency import normalised_view, quiet_share

    rng = np.random.default_rng(0)
    cand = 1.0 + 0.02 * rng.random(30)
    ref = 2.5 + 0.05 * rng.random(30)
    quiet = {"samples_ms": list(cand), "ref_samples_ms": list(ref)}
    plain = float(np.median(cand / ref)) * 2.5
    assert normalised_view(quiet, 2.5)["p50_ms"] == pytest.approx(plain, rel=1e-3)
    assert quiet_share(cand, ref) == 1.0
    # as measured here: the candidate disturbed in 7 pairs, the reference in 19 others
    busy_cand, busy_ref = cand.copy(), ref.copy()
    busy_cand[:7] += 4.0
    busy_ref[7:26] += 4.0
    busy = {"samples_ms": list(busy_cand), "ref_samples_ms": list(busy_ref)}
    assert float(np.median(busy_cand / busy_ref)) * 2.5 < 0.7 * plain  # what all pairs would say
    assert quiet_share(busy_cand, busy_ref) == pytest.approx(4 / 30)
    assert normalised_view(busy, 2.5)["p50_ms"] == pytest.approx(plain, rel=0.03)


def test_a_candidate_whose_pairs_were_mostly_disturbed_is_timed_again(tmp_path, monkeypatch):
    """The quieter window is kept; the record says how many timings it took."""
    import optimize.timing as timing

    disturbed = ([1.0, 5.0] * 2, [6.5, 2.5] * 2)  # no pair has both runs quiet
    quiet = ([1.0, 1.01, 1.02, 1.0], [2.5, 2.52, 2.51, 2.5])
    windows = iter([disturbed, quiet])
    real = timing.time_interleaved

    def fake(candidate, reference, warmup_runs, timed_runs):
        if reference is None:  # the reference's own standalone record
            return real(candidate, reference, warmup_runs, timed_runs)
        return next(windows)

    monkeypatch.setattr(timing, "time_interleaved", fake)
    meter = LatencyMeter("bert", FAST, cache_path=tmp_path / "lat.jsonl", hw="testhw", reference=Arch(2, 3, 33, 37))
    record = meter(Arch(1, 3, 33, 16))
    assert record["timings"] == 2 and record["quiet_share"] == 1.0
    assert record["samples_ms"] == quiet[0] and record["ratio_to_reference"] == pytest.approx(0.4, rel=0.02)
