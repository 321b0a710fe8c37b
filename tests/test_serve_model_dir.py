"""`bort serve --model-dir`: an exported folder as is, a Hugging Face classifier exported on the fly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from bort import config, processes
from bort.errors import ArtifactError
from runtime import recipe
from serve import model_dir as M
from serve.predictor import Predictor
from serve.server import model_folder

TEXTS = ["a gripping, beautifully acted film", "dull and lifeless from start to finish"]


@pytest.fixture()
def hf_classifier(tiny_finetune_run):
    """The tiny `agora` classifier as `bort finetune` saved it (its `bort export` is tiny_export_run's)."""
    return tiny_finetune_run / "finetune" / "models" / "agora"


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_exported_folder_is_served_as_it_is(tiny_export_run, own_cache):
    folder = tiny_export_run / "export" / "baseline" / "int8"
    assert M.servable_folder(folder) == folder.resolve()
    assert not own_cache.exists()


def test_a_hugging_face_classifier_is_exported_once_into_the_cache(hf_classifier, tiny_export_run, own_cache,
                                                                   monkeypatch):
    folder = M.servable_folder(hf_classifier)
    assert folder.is_relative_to(own_cache / "serve") and folder.name == "fp32"
    serving = json.loads((folder / "serving.json").read_text())
    assert serving["labels"] == ["fresh", "rotten"] and serving["precision"] == "fp32"  # from id2label
    exported = Predictor(tiny_export_run / "export" / "optimized" / "fp32", num_threads=1)  # `bort export`'s
    here = Predictor(folder, num_threads=1)
    feeds = here.tokenize(TEXTS).feeds
    np.testing.assert_allclose(here.logits(feeds), exported.logits(feeds), atol=1e-5)
    monkeypatch.setattr(recipe, "export_fp32", lambda *a, **k: pytest.fail("exported twice"))
    assert M.servable_folder(hf_classifier) == folder


def test_changed_weights_get_an_export_of_their_own(hf_classifier, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(hf_classifier, copy)
    assert M.folder_hash(copy) == M.folder_hash(hf_classifier)
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert M.folder_hash(copy) != M.folder_hash(hf_classifier)


def test_a_folder_that_is_neither_says_what_it_should_hold(tmp_path, tiny_source):
    with pytest.raises(ArtifactError, match=r"no config\.json, \*\.safetensors, tokenizer files; expected"):
        M.servable_folder(tmp_path)
    with pytest.raises(ArtifactError, match="not a sequence classifier"):
        M.servable_folder(tiny_source)  # a bare encoder (BertModel)


def test_model_dir_takes_precedence_over_the_runs_export(tiny_export_run):
    folder = tiny_export_run / "export" / "baseline" / "fp32"
    cfg = SimpleNamespace(serve=SimpleNamespace(model_dir=str(folder), model="optimized"),
                          export=SimpleNamespace(parity_atol=1e-4))
    assert model_folder(cfg, tiny_export_run) == (folder.resolve(), str(folder))
    cfg.serve.model_dir = ""
    deployed = json.loads((tiny_export_run / "export" / "deployed.json").read_text())["optimized"]["folder"]
    assert model_folder(cfg, tiny_export_run) == (tiny_export_run / "export" / deployed, "optimized")


@pytest.mark.skipif("model_dir" not in config.resolve(["tiny"]).to_dict()["serve"],
                    reason="serve.model_dir is not in bort/config.py yet")
def test_bort_serve_model_dir_answers_over_http_and_leaves_nothing_behind(hf_classifier, own_cache, tmp_path):
    port = processes.free_port()
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--profile", "tiny", "--model-dir", str(hf_classifier),
           "--port", str(port), "--set", "serve.num_threads=1"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                                env={**os.environ, "BORT_CACHE": str(own_cache)})
    pids: set[int] = set()
    try:
        line = proc.stdout.readline()  # printed once /readyz answers
        assert f"http://127.0.0.1:{port}" in line, log_path.read_text()[-3000:]
        pids = processes.descendants(proc.pid)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/classify", data=json.dumps({"texts": TEXTS}).encode(),
                                     headers={"Content-Type": "application/json"})
        results = json.loads(urllib.request.urlopen(req, timeout=30).read())["results"]
        assert [r["label"] for r in results] == [r["label"] for r in Predictor(M.servable_folder(hf_classifier),
                                                                              num_threads=1).predict(texts=TEXTS)]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not processes.alive(pids), "a server process outlived `bort serve`"
    finally:
        for pid in processes.alive(pids | {proc.pid}):
            os.kill(pid, signal.SIGKILL)
