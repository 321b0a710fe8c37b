"""The search, Agora's Θ and Locust workers on a real two-node Ray cluster, on loopback only.

The cluster (tests/ray_cluster.py) lives in a network namespace of this module's own, whose only
interface is 127.0.0.1; the drivers (tests/ray_driver.py) run inside it. Slow: CI runs this file
explicitly (.ci/run).
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT
from ray_cluster import LoopbackCluster, missing_tools

pytestmark = pytest.mark.slow
DRIVER = ROOT / "tests" / "ray_driver.py"


@pytest.fixture(scope="module")
def cluster():
    why = missing_tools()
    if why:
        pytest.skip(why)
    running = LoopbackCluster()
    try:
        yield running.start()
    finally:
        running.stop()
        assert not running.members(), "a process of the test's Ray cluster outlived it"


def drive(cluster: LoopbackCluster, *args: str, timeout: float = 400) -> dict:
    done = cluster.inside([sys.executable, str(DRIVER), *args], timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"driver failed ({done.returncode}):\n{done.stdout[-4000:]}\n" \
                                           f"{done.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_a_search_on_the_cluster_measures_on_the_target_and_survives_killed_workers(cluster, tiny_source,
                                                                                    tmp_path):
    out = drive(cluster, "search", cluster.address, str(tiny_source), str(tmp_path))
    first, rerun = out["runs"]
    # every latency measurement ran on the node offering bort_target, each shape once
    assert {m["node"] for m in out["measured_all"]} == {out["target"]} != {out["head"]}
    assert first["latency_nodes"] == [out["target"]]
    archs = [m["arch"] for m in out["measured_all"]]
    assert len(archs) == len(set(archs))
    # both kills happened mid-call, and Ray's retries still brought every candidate's ê back
    assert out["killed"] == ["error.killed", "latency.killed"]
    assert len(first["errors"]) == out["grid"] and all(e is not None for e in first["errors"].values())
    assert {r["arch"] for r in out["stored"]} == set(first["errors"])
    # the same front and ê as the inline executor, for the same seed and fake latencies
    assert first["front"] == out["reference"]["front"]
    for label, error in first["errors"].items():
        assert error == pytest.approx(out["reference"]["errors"][label], rel=1e-5), label
    # the rerun measures and trains nothing: everything came from the target's cache and errors.jsonl
    assert out["measured_all"] == out["measured_first"] and out["trained_all"] == out["trained_first"]
    assert rerun["front"] == first["front"] and rerun["errors"] == first["errors"]


def test_bort_optimize_on_ray_keeps_the_latency_cache_of_the_target_node(cluster, tiny_source, tmp_path):
    out = drive(cluster, "stage", cluster.address, str(tiny_source), str(tmp_path / "run"))
    first, rerun = out["runs"]
    target_cache = cluster.cache("target") / "latency"
    assert first["new_latency_measurements"] > 0 and first["latency_cache"].startswith(str(target_cache))
    assert first["latency_ray_node"] == rerun["latency_ray_node"] == out["target"]
    assert not (cluster.cache("head") / "latency").exists()  # nothing was timed on the head
    assert all(e is not None for e in first["errors"].values()) and len(first["errors"]) == first["n_candidates"]
    assert rerun["new_latency_measurements"] == 0 and rerun["errors"] == first["errors"]


def test_theta_enumeration_on_ray_gives_the_rows_of_the_serial_run(cluster, tiny_source, tmp_path):
    out = drive(cluster, "thetas", cluster.address, str(tiny_source), str(tmp_path))
    assert len(out["inline"]["rows"]) >= 2  # later rounds too: the warm-started path is compared
    assert out["ray"]["rows"] == out["inline"]["rows"]
    assert out["ray"]["points"] == out["inline"]["points"]


def test_locust_workers_as_ray_actors_each_send_their_share_to_loopback(cluster, tmp_path):
    out = drive(cluster, "locust", cluster.address, str(tmp_path))
    assert out["target"].startswith("http://127.0.0.1:")
    for users, level in out["levels"].items():
        workers = level["workers"]
        assert len(workers) == 2 and all(w["worker"].startswith("w") and w["requests"] > 0 for w in workers), users
        assert sum(w["requests"] for w in workers) == level["requests"] and level["failures"] == 0
        assert sum(w["share"] for w in workers) == pytest.approx(1.0, abs=1e-3)
