"""``bentoml build`` from only the files bentofile.yaml names: it builds, and the Bento has no torch."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

HEAVY = ("torch", "transformers", "optimum", "onnx==", "accelerate", "scikit-learn")


def build_bento(work: Path, home: Path, env_extra: dict[str, str] | None = None) -> Path:
    """Copy bentofile.yaml and the files it includes into `work`, build there; return the Bento folder."""
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    work.mkdir(parents=True, exist_ok=True)
    (work / "bentofile.yaml").write_text((ROOT / "bentofile.yaml").read_text())
    for pattern in spec["include"]:
        for src in ROOT.glob(pattern):
            (work / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / src.relative_to(ROOT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **(env_extra or {})})
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tag = re.search(r"bort-classifier:(\w+)", done.stdout + done.stderr).group(1)
    return home / "bentos" / "bort-classifier" / tag


def test_bento_builds_from_its_own_files_and_holds_no_torch(tmp_path):
    bento = build_bento(tmp_path / "clone", tmp_path / "home")
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime==" in requirements and "tokenizers==" in requirements
    for name in HEAVY:
        assert name not in requirements, f"{name} in the Bento's requirements"
    sources = sorted(p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py"))
    assert sources == ["bort/__init__.py", "bort/config.py", "bort/errors.py", "runtime/__init__.py",
                       "runtime/batching.py", "runtime/session.py", "serve/__init__.py", "serve/app.py", "serve/metrics.py",
                       "serve/openapi.py", "serve/predictor.py", "serve/service.py", "serve/validation.py"]
    for path in (bento / "src").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(torch|transformers|optimum)\b", path.read_text(), re.M), path
    assert not list(bento.rglob("*.safetensors")) and not list(bento.rglob("*.onnx"))


@pytest.mark.slow
@pytest.mark.integration
def test_bento_with_packed_model_serves_without_the_repo(tiny_export_run, tmp_path):
    """BORT_BENTO_MODEL at build packs the exported model; the Bento then serves it alone."""
    import json
    import shutil as sh
    import urllib.request

    from bort.processes import free_port

    home = tmp_path / "home"
    sh.copytree(Path(os.environ["BENTOML_HOME"]) / "models", home / "models")
    bento = build_bento(tmp_path / "clone", home, {"BORT_BENTO_MODEL": "bort-optimized:latest"})
    recorded = yaml.safe_load((bento / "bento.yaml").read_text())["services"][0]["models"]
    assert [m["tag"].split(":")[0] for m in recorded] == ["bort-optimized"], "the Bento must record the model"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BORT_", "PYTHONPATH"))}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"})
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", f"bort-classifier:{bento.name}",
                             "--port", str(port), "--host", "127.0.0.1"], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/classify", data=b'{"texts": ["great"]}',
                                     headers={"Content-Type": "application/json"})
        data = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert data["results"][0]["label"] in ("fresh", "rotten")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent
