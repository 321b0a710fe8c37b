"""bort/cluster.py without a cluster: Ray stays optional, folders travel as bytes, mistakes are one line.

The cluster itself (a head and a target node on loopback) is tests/test_ray_cluster.py (slow)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from bort import cluster
from bort import config as C
from bort.errors import ConfigError

PACKAGES = ("bort", "optimize", "pretrain", "distillation", "agora", "serve", "loadtest", "pipeline", "runtime")

# Ray made uninstallable, then every module of every package imported (the locustfile is a Locust
# script, not a module: it needs Locust's environment), and `bort --help` run.
NO_RAY = f"""
import importlib, pkgutil, sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is not installed")
sys.meta_path.insert(0, NoRay())
for package in {PACKAGES!r}:
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        if info.name != "loadtest.locustfile":
            importlib.import_module(info.name)
from pipeline import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
print("RAY_LOADED" if "ray" in sys.modules else "NO_RAY")
"""


def test_every_bort_module_imports_without_ray_and_never_loads_it():
    done = subprocess.run([sys.executable, "-c", NO_RAY], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("NO_RAY")


def test_asking_for_ray_without_it_is_one_line_naming_the_setting_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError) as e, cluster.connected("", "optimize.executor"):
        pass
    assert "optimize.executor=ray" in str(e.value) and "bort[ray]" in str(e.value) and "\n" not in str(e.value)


def test_a_folder_travels_as_bytes_and_is_unpacked_once_per_node(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 33}')
    (folder / "model.safetensors").write_bytes(b"\x00weights" * 100)
    (folder / "notes.pkl").write_bytes(b"never shipped: not a Hugging Face file")
    packed = cluster.pack_folder(folder)
    assert set(packed.files) == {"config.json", "model.safetensors"}
    first = cluster.unpack_folder(packed, tmp_path / "node")
    assert (first / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    (first / "marker").write_text("kept")
    assert cluster.unpack_folder(packed, tmp_path / "node") == first and (first / "marker").exists()
    (folder / "config.json").write_text('{"hidden_size": 37}')
    assert cluster.pack_folder(folder).digest != packed.digest  # other bytes, another folder


@pytest.mark.parametrize(("overrides", "key"), [
    (["optimize.executor=dask"], "optimize.executor"),
    (["finetune.executor=process"], "finetune.executor"),
    (["loadtest.executor=ray"], "loadtest.executor=ray needs loadtest.workers"),
    (["optimize.ray_cpus_per_task=0"], "optimize.ray_cpus_per_task"),
])
def test_cluster_settings_are_validated_with_one_line(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        C.resolve(["tiny"], overrides)


def test_executor_auto_keeps_what_workers_meant():
    from optimize.executor import resolve_kind

    assert resolve_kind("auto", 1) == "inline" and resolve_kind("auto", 3) == "process"
    assert resolve_kind("ray", 1) == "ray"
