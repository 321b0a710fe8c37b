"""Run artifacts: manifests written last and atomically, verified on read."""

import json

import pytest

from bort import artifacts as A
from bort import config as C
from bort.errors import ArtifactError


def _make_stage(run_dir, cfg):
    folder = A.stage_dir(run_dir, "optimize")
    folder.mkdir(parents=True)
    (folder / "front.json").write_text("[1, 2]")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "step.bin").write_bytes(b"x")
    fp = A.stage_fingerprint(cfg, "optimize")
    return A.write_manifest(run_dir, "optimize", cfg, fingerprint=fp, metrics={"front_size": 2})


def test_manifest_round_trips_and_records_the_machine(tmp_path):
    cfg = C.resolve()
    written = _make_stage(tmp_path, cfg)
    read = A.read_manifest(tmp_path, "optimize")
    assert read.metrics == {"front_size": 2}
    assert read.fingerprint == written.fingerprint
    assert read.config == cfg.to_dict()
    assert set(read.outputs) == {"front.json"}  # checkpoints are not outputs
    assert read.machine["model"] and "onnxruntime" in read.versions
    assert A.is_up_to_date(tmp_path, "optimize", written.fingerprint)
    assert not A.is_up_to_date(tmp_path, "optimize", "0" * 16)


def test_changed_output_is_detected(tmp_path):
    _make_stage(tmp_path, C.resolve())
    (tmp_path / "optimize" / "front.json").write_text("[1, 3]")
    with pytest.raises(ArtifactError, match="changed since optimize wrote it"):
        A.read_manifest(tmp_path, "optimize")


def test_missing_artifact_names_the_command(tmp_path):
    with pytest.raises(ArtifactError, match="run `bort pretrain --run-dir"):
        A.read_manifest(tmp_path, "pretrain")


def test_upstream_fingerprint_changes_the_stage_fingerprint():
    cfg = C.resolve()
    assert A.stage_fingerprint(cfg, "pretrain", {"optimize": "a"}) != A.stage_fingerprint(
        cfg, "pretrain", {"optimize": "b"})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    A.atomic_write_json(tmp_path / "x.json", {"a": 1})
    A.atomic_write_json(tmp_path / "x.json", {"a": 2})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_busy_warning_names_the_load_and_the_cores(monkeypatch):
    import psutil

    from bort.artifacts import busy_warning, cpu_info

    cores = cpu_info()["usable_cores"]
    monkeypatch.setattr(psutil, "getloadavg", lambda: (cores + 3.0, 0.0, 0.0))
    line = busy_warning("latencies")
    assert line is not None and f"on {cores} usable cores" in line and "latencies measured now" in line
    monkeypatch.setattr(psutil, "getloadavg", lambda: (cores - 0.5, 9.0, 9.0))
    assert busy_warning("latencies") is None
